"""Compile a pipeline to KFP's IR YAML, and load it back for checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


def pipeline_functions() -> dict[str, Callable]:
    """Every pipeline of the project by name (imported lazily: kfp is heavy)."""
    from pipelines.training import training_pipeline

    return {"training": training_pipeline}


def compile_pipeline(name: str, out: Path) -> Path:
    """Write the IR YAML of pipeline `name` to `out` and return the path."""
    from kfp import compiler

    functions = pipeline_functions()
    if name not in functions:
        from kubeloop.errors import KubeloopError

        raise KubeloopError(f"unknown pipeline {name!r}; choose one of {sorted(functions)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(functions[name], str(out))
    return out


def load_ir(path: Path) -> dict[str, Any]:
    """The compiled pipeline spec as a dict (the first YAML document of the package)."""
    with open(path) as fh:
        return next(yaml.safe_load_all(fh))
