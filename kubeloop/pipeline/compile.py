"""Compile a pipeline to KFP's IR YAML, and load it back for checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


def pipeline_functions() -> dict[str, Callable]:
    """Every pipeline by name, from the plug-in table (group `pipelines`; each is imported
    here, lazily: kfp is heavy)."""
    from kubeloop import plugins

    return {name: plugins.load(plugins.PIPELINES, name) for name in pipeline_names()}


def pipeline_names() -> list[str]:
    """The names of the registered pipelines (nothing is imported)."""
    from kubeloop import plugins

    return plugins.names(plugins.PIPELINES)


# What kfp's compiler writes: YAML (the IR package) or JSON, chosen by the suffix.
PACKAGE_SUFFIXES = (".yaml", ".yml", ".json")


def package_path(name: str, out: Path) -> Path:
    """Where `compile_pipeline(name, out)` writes: `out` itself when it names a package
    file, `out/<name>_pipeline.yaml` when it is a directory (an existing one, or a path
    without a suffix). Raises KubeloopError for any other suffix."""
    from kubeloop.errors import KubeloopError

    out = Path(out)
    if out.is_dir() or not out.suffix:
        return out / f"{name}_pipeline.yaml"
    if out.suffix.lower() not in PACKAGE_SUFFIXES:
        raise KubeloopError(
            f"--out {out}: a pipeline package must end with {', '.join(PACKAGE_SUFFIXES)}; "
            f"pass e.g. --out {out.with_suffix('.yaml')} or a directory"
        )
    return out


def compile_pipeline(name: str, out: Path, use_case: str | None = None) -> Path:
    """Write the IR YAML of pipeline `name` to `out` (a file, or a directory: see
    `package_path`) and return the path written. With `use_case`, the pipeline's
    `use_case` parameter defaults to it (and `model_name` to its registry name), so the
    package runs that use case when submitted without parameters."""
    from kfp import compiler

    from kubeloop import plugins
    from kubeloop.errors import KubeloopError

    if name not in pipeline_names():
        raise KubeloopError(
            f"unknown pipeline {name!r}; choose one of {', '.join(pipeline_names())} (--name)"
        )
    out = package_path(name, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parameters = None
    if use_case is not None:
        from kubeloop.usecase import load_use_case

        spec = load_use_case(use_case)  # an unknown name fails here, in one line
        parameters = {"use_case": spec.name, "model_name": spec.defaults.model_name}
    compiler.Compiler().compile(
        plugins.load(plugins.PIPELINES, name), str(out), pipeline_parameters=parameters
    )
    return out


def load_ir(path: Path) -> dict[str, Any]:
    """The compiled pipeline spec as a dict (the first YAML document of the package)."""
    with open(path) as fh:
        return next(yaml.safe_load_all(fh))


def load_platform_spec(path: Path, platform: str = "kubernetes") -> dict[str, Any]:
    """The package's platform config for `platform` (the second YAML document, which KFP's
    compiler writes when a task has kfp-kubernetes settings such as a Secret as env):
    `{"deploymentSpec": {"executors": {"exec-<task>": {...}}}}`; empty when there is none."""
    with open(path) as fh:
        docs = list(yaml.safe_load_all(fh))
    for doc in docs[1:]:
        if doc and platform in (doc.get("platforms") or {}):
            return doc["platforms"][platform]
    return {}
