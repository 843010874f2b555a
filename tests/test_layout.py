"""The folders are the architecture; a top-level folder must never shadow an installed
package (pytest runs from the repo root, so `docker/` once hid the docker SDK kfp.local needs)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN_PACKAGES = {"kubeloop", "models", "components", "pipelines", "tests", "bench"}
# Names imported lazily by our dependencies but not installed here: a folder of that name
# would make the import succeed as an empty namespace package (kfp.local imports docker).
RESERVED = {"docker"}
# Installed bare folders (no __init__.py) that nothing imports: feast ships its Sphinx
# sources as site-packages/docs. Both are namespace portions; ours hides nothing.
NAMESPACE_OVERLAP_OK = {"docs"}


def test_no_top_level_folder_shadows_an_installed_package():
    site = Path(sysconfig.get_paths()["purelib"])
    installed = {p.name for p in site.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", ".egg-info"))}
    installed |= {p.stem for p in site.glob("*.py")}
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for name in NAMESPACE_OVERLAP_OK:
        assert not (site / name / "__init__.py").exists(), f"site-packages/{name} became a package"
        assert not (ROOT / name / "__init__.py").exists(), f"{name}/ must stay a plain folder"
    clashes = (folders - OWN_PACKAGES - NAMESPACE_OVERLAP_OK) & (installed | RESERVED)
    assert not clashes, f"top-level folders {sorted(clashes)} shadow installed packages; rename them"


def test_own_packages_are_not_shadowed_by_site_packages():
    site = Path(sysconfig.get_paths()["purelib"])
    for name in ("models", "components", "pipelines"):
        assert not (site / name).exists(), f"site-packages has a foreign {name!r} package"
