"""The component image sets what LightGBM's OpenMP runtime reads once, at load."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(dockerfile: str) -> dict[str, str]:
    """Every KEY=VALUE an ENV instruction sets, across continued lines."""
    text = re.sub(r"\\\n", " ", dockerfile)
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S+)", line):
                pairs[key] = value
    return pairs


def test_components_image_waits_passively_for_cores() -> None:
    # Busy-waiting OpenMP threads on shared cores made one training 8x slower in the
    # training bench; setting it inside the trainer is too late (read when lightgbm loads).
    env = _env((ROOT / "images" / "components.Dockerfile").read_text())
    assert env.get("OMP_WAIT_POLICY") == "PASSIVE"
