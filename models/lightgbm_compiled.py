"""Compiled LightGBM trees (lleaves): built once at export, loaded by the predictor.

`compile_export(directory)` is the LightGBM kind's export hook (`ModelKind.export_hook`):
the registry's export calls it on the directory it is about to publish, and it writes

    model.compiled.so     the trees of model.txt compiled to machine code by lleaves
                          (LLVM), an object file MCJIT loads without recompiling
    model.compiled.json   what it was compiled from and for: the sha256 of model.txt, the
                          target triple and CPU, the lleaves and llvmlite versions

The code is compiled for the baseline CPU of the target triple (x86-64 without
extensions there), so it runs on any node of that architecture, not just the machine
that exported it. `load_compiled(directory)` returns a predictor-ready model, or None
with the reason logged (lleaves missing, no compiled file, another architecture, a
model.txt that changed since): the caller then serves the booster, which gives the same
probabilities to ~1e-16 (tests/test_compiled_trees.py checks at most 1e-9 on 10k rows).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

COMPILED_FILE = "model.compiled.so"
COMPILED_INFO = "model.compiled.json"
MODEL_TEXT = "model.txt"

log = logging.getLogger("kubeloop.serving.compiled_trees")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _target() -> tuple[str, str]:
    """The process triple and the baseline CPU name of its architecture."""
    import llvmlite.binding as llvm

    triple = llvm.get_process_triple()
    return triple, ("x86-64" if triple.startswith("x86_64") else "generic")


def compile_export(directory: str | Path) -> Path | None:
    """Compile `directory/model.txt` into `model.compiled.so` (+ its json); the LightGBM
    kind's export hook. Returns the compiled file, or None (logged) when lleaves is not
    installed: the export is still complete, the predictor serves the booster."""
    directory = Path(directory)
    source = directory / MODEL_TEXT
    try:
        import lleaves
        import llvmlite
    except ImportError as exc:
        log.warning("compiled trees unavailable (%s): %s exported without them", exc, directory)
        return None
    triple, cpu = _target()
    target = directory / COMPILED_FILE
    target.unlink(missing_ok=True)  # lleaves only writes a cache that does not exist
    try:
        model = lleaves.Model(model_file=str(source))
        model.compile(cache=str(target), target_cpu=cpu, target_cpu_features="")
    except Exception as exc:  # noqa: BLE001 - the export stays complete without them
        target.unlink(missing_ok=True)
        log.warning("compiling %s failed (%s): exported without compiled trees", source, exc)
        return None
    info = {
        "source": MODEL_TEXT,
        "source_sha256": _sha256(source),
        "triple": triple,
        "cpu": cpu,
        "lleaves": getattr(lleaves, "__version__", None) or _version("lleaves"),
        "llvmlite": llvmlite.__version__,
    }
    (directory / COMPILED_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return target


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


class CompiledTrees:
    """lleaves' compiled model behind one call: probabilities of a float64 matrix."""

    def __init__(self, model: Any):
        self._model = model
        self._entry = _direct_entry(model)
        self._n_features = model.num_feature()

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        data = np.ascontiguousarray(matrix, dtype=np.float64)
        if self._entry is None or data.ndim != 2 or data.shape[1] != self._n_features:
            # One thread: serving batches are small (see LightGBMModel.predict_batch).
            return self._model.predict(matrix, n_jobs=1)
        n = data.shape[0]
        out = np.empty(n, dtype=np.float64)
        if n:
            self._entry(data.ctypes.data, out.ctypes.data, 0, n)
        return out


def _direct_entry(model: Any) -> Any:
    """The compiled function itself, taking raw addresses (lleaves' `predict` with one
    thread calls the same function, after a few microseconds of argument conversion per
    call that a 1-row request notices), or None where lleaves does not expose it the
    way this reads it (fp64, one output per row): `predict` then serves."""
    import ctypes

    entry = getattr(model, "_c_entry_func", None)
    if entry is None or not getattr(model, "use_fp64", False):
        return None
    if getattr(model, "_n_classes", None) != 1:
        return None
    address = ctypes.cast(entry, ctypes.c_void_p).value
    # CFUNCTYPE releases the GIL during the call, as lleaves' own type does.
    kind = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32)
    return kind(address)


def load_compiled(directory: str | Path) -> CompiledTrees | None:
    """The compiled trees of an export directory, or None with the reason logged."""
    directory = Path(directory)
    compiled, info_path = directory / COMPILED_FILE, directory / COMPILED_INFO
    if not compiled.is_file() or not info_path.is_file():
        log.warning(
            "%s has no compiled trees (%s): serving the LightGBM booster", directory, COMPILED_FILE
        )
        return None
    try:
        import lleaves
    except ImportError as exc:
        log.warning("compiled trees unavailable (%s): serving the LightGBM booster", exc)
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        triple, cpu = _target()
        if info.get("triple") != triple:
            reason = f"compiled for {info.get('triple')}, this process is {triple}"
        elif info.get("source_sha256") != _sha256(directory / MODEL_TEXT):
            reason = f"{MODEL_TEXT} changed since it was compiled"
        else:
            reason = None
        if reason is not None:
            log.warning("%s: %s; serving the LightGBM booster", compiled, reason)
            return None
        model = lleaves.Model(model_file=str(directory / MODEL_TEXT))
        model.compile(cache=str(compiled), target_cpu=cpu, target_cpu_features="")
    except Exception as exc:  # noqa: BLE001 - any failure here falls back, logged
        log.warning("%s cannot be loaded (%s); serving the LightGBM booster", compiled, exc)
        return None
    log.info("serving compiled trees from %s", compiled)
    return CompiledTrees(model)
