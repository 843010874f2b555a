"""Export a registered version as a KServe `storageUri` directory: `export(registry, ...)`,
a free function over any `ModelRegistry` (the registry's `export` method calls it), and
`export_version` for a record and its files.

KServe's storage initializer downloads the directory a storageUri names into
/mnt/models, and the model server loads from there. The stock LightGBM server (lgbserver)
lists that directory's top level and requires exactly one `*.bst` file, which it opens
with `lightgbm.Booster(model_file=...)`; a LightGBM text model (`model.txt`) loads that
way under any name. So the export is:

    <dest>/<the model files, as the trainer wrote them>   e.g. model.txt, or model.pt + model.json
    <dest>/model.bst            a copy of the main model file under the name the kind's
                                stock KServe server expects (its spec's `kserve_model_file`,
                                lightgbm: model.bst), unless one is there
    <dest>/<what the kind's export hook adds>   its spec's `export_hook`; lightgbm:
                                model.compiled.so + .json, the trees compiled by lleaves
    <dest>/reference.parquet    the reference sample, when the version has one
    <dest>/metadata.json        the ModelVersion record (its stage as of the export), written last

Local destinations are built in a hidden sibling directory and renamed into place, so
`dest` appears complete or not at all. Object stores have no rename (fsspec's `mv` is
copy-then-delete), so there the files are uploaded in place with metadata.json last, and
on failure everything written is deleted again; a reader should treat metadata.json as
the marker of a complete export.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from kubeloop.registry.records import ModelVersion, RegistryError

if TYPE_CHECKING:
    import pandas as pd
    from fsspec import AbstractFileSystem

    from kubeloop.registry.base import ModelRegistry

METADATA_FILE = "metadata.json"
REFERENCE_FILE = "reference.parquet"


def kserve_model_file(kind: str) -> str | None:
    """The file name the stock KServe server of `kind` looks for at the top level (its
    spec's `kserve_model_file`), None when it has none or the kind is not registered."""
    from kubeloop.training.model_kind import is_known, model_kind

    return model_kind(kind).kserve_model_file if is_known(kind) else None


def prepare_for_kind(kind: str, staging: Path) -> None:
    """The kind's export hook (its spec's `export_hook`, e.g. LightGBM's compiled trees)
    on the staging directory; nothing for an unregistered kind."""
    from kubeloop.training.model_kind import is_known, model_kind

    if is_known(kind):
        model_kind(kind).prepare_export(staging)


def _fill(
    staging: Path,
    record: ModelVersion,
    model_dir: Path,
    reference: pd.DataFrame | Path | None,
) -> None:
    """Write the export layout into the existing, empty directory `staging`."""
    shutil.copytree(model_dir, staging, dirs_exist_ok=True)
    prepare_for_kind(record.model_kind, staging)
    served_name = kserve_model_file(record.model_kind)
    if served_name is not None:
        suffix = Path(served_name).suffix
        present = [p.name for p in staging.iterdir() if p.is_file() and p.suffix == suffix]
        if len(present) > 1:
            raise RegistryError(
                f"{record.ref} has {len(present)} {suffix} files at its top level"
                f" ({', '.join(sorted(present))}); KServe's {record.model_kind} server accepts one"
            )
        if not present:
            if record.model_file is None:
                raise RegistryError(
                    f"{record.ref} does not say which file is its {record.model_kind} model"
                    " (model_file was not given at registration and the directory holds"
                    " several files), so the KServe model file cannot be written"
                )
            shutil.copyfile(model_dir / record.model_file, staging / served_name)
    if isinstance(reference, Path):
        shutil.copyfile(reference, staging / REFERENCE_FILE)
    elif reference is not None:
        reference.to_parquet(staging / REFERENCE_FILE, index=False)
    (staging / METADATA_FILE).write_text(record.model_dump_json(indent=2) + "\n", encoding="utf-8")


def _export_local(
    dest: Path,
    record: ModelVersion,
    model_dir: Path,
    reference: pd.DataFrame | Path | None,
    overwrite: bool,
) -> str:
    dest = dest.expanduser().absolute()
    occupied = dest.exists() and (dest.is_file() or any(dest.iterdir()))
    if occupied and not overwrite:
        raise RegistryError(f"export destination {dest} already exists and is not empty")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the final rename stays on one file system and is atomic.
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.export-"))
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the model from other users
        _fill(staging, record, model_dir, reference)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(dest, old)
            try:
                os.rename(staging, dest)
            except BaseException:
                os.rename(old, dest)
                raise
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return str(dest)


def _export_remote(
    fs: AbstractFileSystem,
    root: str,
    record: ModelVersion,
    model_dir: Path,
    reference: pd.DataFrame | Path | None,
    overwrite: bool,
) -> str:
    root = root.rstrip("/")
    if fs.exists(root):
        occupied = fs.isfile(root) or bool(fs.ls(root))
        if occupied and not overwrite:
            raise RegistryError(
                f"export destination {fs.unstrip_protocol(root)} already exists and is not empty"
            )
        if occupied:
            fs.rm(root, recursive=True)
    with tempfile.TemporaryDirectory(prefix="kubeloop-export-") as tmp:
        staging = Path(tmp)
        _fill(staging, record, model_dir, reference)
        files = sorted(
            (p for p in staging.rglob("*") if p.is_file()),
            key=lambda p: (p.name == METADATA_FILE, p.as_posix()),
        )
        try:
            for path in files:
                target = f"{root}/{path.relative_to(staging).as_posix()}"
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                fs.put_file(str(path), target)
        except BaseException:
            # Cleanup is best effort: the upload's own error is the one to report.
            with contextlib.suppress(Exception):
                if fs.exists(root):
                    fs.rm(root, recursive=True)
            raise
    return fs.unstrip_protocol(root)


def export_version(
    record: ModelVersion,
    model_dir: Path,
    dest: str | Path,
    *,
    reference: pd.DataFrame | Path | None = None,
    overwrite: bool = False,
) -> str:
    """Write `record`'s model files from `model_dir`, its reference sample and
    metadata.json to `dest` in the layout the module docstring describes.

    `dest` is a local path or any fsspec URL (s3://, gs://, memory://, ...). It must not
    exist or be empty, unless `overwrite`. Returns the destination as written: an
    absolute path for local destinations, else the URL. A failed export leaves nothing
    at `dest` (for a local `dest` with `overwrite`, the previous contents).
    """
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, root = fsspec.core.url_to_fs(str(dest))
    except (ImportError, ValueError) as exc:
        raise RegistryError(f"cannot export to {dest}: {exc}") from exc
    if isinstance(fs, LocalFileSystem):
        return _export_local(Path(root), record, Path(model_dir), reference, overwrite)
    return _export_remote(fs, root, record, Path(model_dir), reference, overwrite)


def export(
    registry: ModelRegistry,
    name: str,
    version: str | None,
    dest: str | Path,
    *,
    overwrite: bool = False,
) -> str:
    """Write version `version` of `name` from `registry` in KServe storageUri layout to
    `dest` (a local path or any fsspec URL) and return what was written; see
    `export_version` for the rules on `dest`."""
    record = registry.get(name, version)
    reference: pd.DataFrame | Path | None = None
    if record.reference_rows:
        reference = registry.reference_file(name, record.version)
        if reference is None:
            reference = registry.reference(name, record.version)
    return export_version(
        record,
        registry.model_path(name, record.version),
        dest,
        reference=reference,
        overwrite=overwrite,
    )
