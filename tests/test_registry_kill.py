"""A registration killed with a real SIGKILL mid-write leaves nothing half-written visible,
and the next open of the registry removes its debris (the `stages/*.tmp` file and the
uncommitted version directory) -- but never the files of a writer still at work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from kubeloop.registry import open_registry

FEATURES = ["hour", "device"]

# Runs in the child: register one version, but stop dead at POINT (after writing the
# stages file's temporary copy, or after the first model file reached the store) and
# announce it, so that the parent's SIGKILL lands exactly mid-write.
CHILD = r"""
import json, os, shutil, sys, time
from pathlib import Path

import pandas as pd

root, model_dir, point, ready = sys.argv[1:5]


def pause():
    Path(ready).write_text(str(os.getpid()))
    time.sleep(600)


if point == "stages-tmp":
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent.name == "stages" and str(dst).endswith(".json"):
            pause()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
elif point == "model-copy":
    real_copyfile = shutil.copyfile

    def copyfile(src, dst, *args, **kwargs):
        done = real_copyfile(src, dst, *args, **kwargs)
        if str(dst).startswith(os.path.join(root, "models")):
            pause()
        return done

    shutil.copyfile = copyfile

from kubeloop.registry import open_registry

request = json.loads(os.environ["REQUEST"])
reference = pd.DataFrame({"hour": [1, 2], "device": ["mobile", "desktop"]})
open_registry(root).register("ctr", model_dir, request, reference=reference)
print("registered")
"""


def _request() -> dict:
    return {
        "model_kind": "lightgbm",
        "metrics": {"auc": 0.7},
        "gate": {"passed": True, "reasons": ["beats the base rate"]},
        "feature_service": "ctr_model",
        "features": FEATURES,
        "training_window": {"start": "2024-03-01T00:00:00Z", "end": "2024-03-08T00:00:00Z"},
        "data_scenario": "baseline",
        "code_version": "test",
    }


def _model_dir(path: Path, files: int = 1) -> Path:
    path.mkdir(parents=True)
    (path / "model.txt").write_text("tree 0")
    for i in range(files):
        (path / f"part-{i}.bin").write_bytes(os.urandom(1024))
    return path


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    # BentoML stages models in the temp dir and may touch HOME: keep both private.
    (tmp_path / "tmp").mkdir()
    return {
        **os.environ,
        "TMPDIR": str(tmp_path / "tmp"),
        "HOME": str(tmp_path / "home"),
        "REQUEST": json.dumps(_request()),
    }


def _start_paused(root: Path, model_dir: Path, point: str, env: dict, tmp_path: Path):
    """Start a registration in a child process and wait until it stands at `point`."""
    ready = tmp_path / f"ready-{point}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(model_dir), point, str(ready)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    while not ready.exists():
        if child.poll() is not None:
            raise AssertionError(f"child ended before {point}: {child.communicate()}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"child never reached {point}")
        time.sleep(0.05)
    return child


def _sigkill(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL


def _debris(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tmp"))


def _version_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "models" / "ctr").iterdir() if p.is_dir())


def _register_first(root: Path, tmp_path: Path) -> None:
    reference = pd.DataFrame({"hour": [1], "device": ["mobile"]})
    open_registry(root).register(
        "ctr", _model_dir(tmp_path / "m1"), _request(), reference=reference
    )


def test_killed_while_committing_leaves_no_visible_half_and_open_cleans(
    tmp_path: Path, env: dict[str, str]
) -> None:
    root = tmp_path / "registry"
    _register_first(root, tmp_path)
    child = _start_paused(root, _model_dir(tmp_path / "m2"), "stages-tmp", env, tmp_path)
    try:
        # Mid-write: the new version's files and the stages file's temporary copy exist.
        assert _debris(root) and _debris(root)[0].startswith("stages/.ctr.json.")
        assert _version_dirs(root) == ["v0001", "v0002"]

        # A writer still at work holds the lock: opening must not touch its files,
        # and readers see only the committed version.
        live = open_registry(root)
        assert _debris(root) and _version_dirs(root) == ["v0001", "v0002"]
        assert [v.version for v in live.list("ctr")] == ["v0001"]
        assert live.clean_stale() is False
    finally:
        _sigkill(child)

    # The killer's debris stays until the registry is opened again ...
    assert _debris(root) and _version_dirs(root) == ["v0001", "v0002"]
    registry = open_registry(root)
    # ... which removes it: nothing half-written is left or listed.
    assert _debris(root) == []
    assert _version_dirs(root) == ["v0001"]
    assert [v.version for v in registry.list("ctr")] == ["v0001"]
    assert (root / "models" / "ctr" / "latest").read_text() == "v0001"
    # And the registry goes on: the next version takes the number the killed one never got.
    again = registry.register("ctr", _model_dir(tmp_path / "m3"), _request())
    assert again.version == "v0002"
    assert [v.version for v in open_registry(root).list("ctr")] == ["v0001", "v0002"]


def test_killed_while_copying_the_model_leaves_no_visible_half(
    tmp_path: Path, env: dict[str, str]
) -> None:
    root = tmp_path / "registry"
    _register_first(root, tmp_path)
    model_dir = _model_dir(tmp_path / "m2", files=20)
    child = _start_paused(root, model_dir, "model-copy", env, tmp_path)
    partial = root / "models" / "ctr" / "v0002"
    try:
        copied = [p for p in partial.rglob("*") if p.is_file()]
        assert 0 < len(copied) < 20  # really half a copy
    finally:
        _sigkill(child)

    assert partial.is_dir()
    registry = open_registry(root)
    assert not partial.exists()
    assert _debris(root) == []
    assert [v.version for v in registry.list("ctr")] == ["v0001"]
    assert registry.get("ctr").version == "v0001"
