"""What the named scenarios of a synthetic use case share: a name and a description, the rule
that a scenario's change holds from the run's change day on, and read-only mappings for the
plain data that describes a world.

A use case's `scenarios.py` subclasses `Scenario` with the parts of its world a scenario may
change, and answers "what is in effect on day d" through `Scenario.on_day`, so the days
before the change day are the baseline's in every use case (the same data as a baseline
run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

T = TypeVar("T")


def frozen(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    """A read-only copy of `mapping` (scenario data is frozen, like the dataclasses)."""
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Scenario:
    """A named change of a synthetic world, applied to every day from the change day on."""

    name: str
    description: str

    @staticmethod
    def on_day(day_index: int, change_day: int, changed: T | None, baseline: T) -> T:
        """What is in effect on day `day_index` (0-based): `changed` from `change_day` on
        when the scenario changes that part (not None), else `baseline`."""
        if changed is not None and day_index >= change_day:
            return changed
        return baseline
