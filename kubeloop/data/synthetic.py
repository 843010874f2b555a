"""What every seeded generator of a synthetic use case shares: streaming its days to the lake
in bounded memory, and the summary fields every `GenerationSummary` has.

A generator (`usecases/<name>/generator.py`) draws its population once and then yields each
day as a plan (anything with a `clock`, a `DayClock`) whose rows come as a few tables of at
most a chunk each; `day_stream` pairs the two, `iter_tables` flattens them for replay, and
`write_lake` writes them under `<lake_root>/events/day=YYYY-MM-DD/`, swapping the new
`events/` in whole once it is complete (`kubeloop.data.lake.staged_events`). Nothing here
knows a column of any use case: the columns to total come from the caller.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kubeloop.data.lake import resolve, staged_events, write_day
from kubeloop.usecase import SyntheticConfig


class DayPlan(Protocol):
    """One generated day: its clock (the rest is the generator's)."""

    @property
    def clock(self) -> DayClock:
        """When the day's rows fall (`DayClock`)."""
        ...


@dataclass(frozen=True)
class DayClock:
    """When a generated day's rows fall: its date and 0-based index, its midnight in epoch
    microseconds, the id of its first event and how many of its rows fall in each of its
    1440 minutes."""

    day: date
    day_index: int
    day_us: int
    first_event_id: int
    minute_counts: np.ndarray

    @classmethod
    def of(
        cls,
        config: SyntheticConfig,
        day_index: int,
        first_event_id: int,
        rows: int,
        hourly: Sequence[float],
    ) -> DayClock:
        """Day `day_index` of `config`, its `rows` spread over the minutes by `minute_counts`
        under the relative traffic `hourly` of each hour."""
        day = config.start_date + timedelta(days=day_index)
        return cls(
            day=day,
            day_index=day_index,
            day_us=epoch_us(day),
            first_event_id=first_event_id,
            minute_counts=minute_counts(config.seed, day_index, rows, hourly),
        )

    def streams(self, seed: int, *names: str) -> dict[str, np.random.Generator]:
        """The day's stream of each of `names` (`day_stream`)."""
        return {name: day_stream(seed, self.day_index, name) for name in names}


def iter_tables(days: Iterable[tuple[date, Iterable[pa.Table]]]) -> Iterator[tuple[date, pa.Table]]:
    """The days' tables as `(day, table)` pairs, one pair per chunk (what a synthetic
    source's `iter_day_tables` yields)."""
    for day, tables in days:
        for table in tables:
            yield day, table


@dataclass(frozen=True)
class DayGenerator:
    """A seeded generator's three parts: `population(config)` drawn once, `plans(config,
    population)` one plan per day in order, `tables(config, population, plan)` that day's
    rows as tables of at most a chunk each (`schema`). `label` and `oracle` are totalled
    when the lake is written."""

    population: Callable[[Any], Any]
    plans: Callable[[Any, Any], Iterable[DayPlan]]
    tables: Callable[[Any, Any, Any], Iterable[pa.Table]]
    schema: pa.Schema
    label: str
    oracle: str

    def days(self, config: SyntheticConfig) -> Iterator[tuple[date, Iterable[pa.Table]]]:
        """(date, that day's tables) per day; the population is drawn on the first step and
        each day's tables lazily, so memory holds one chunk at a time."""
        population = self.population(config)
        for plan in self.plans(config, population):
            yield plan.clock.day, self.tables(config, population, plan)

    def iter_day_tables(self, config: SyntheticConfig) -> Iterator[tuple[date, pa.Table]]:
        """The lake's rows in time order as `(day, table)` pairs, one per chunk; a day's
        tables concatenated are exactly the rows `write` puts in its partition."""
        return iter_tables(self.days(config))

    def write(
        self, config: SyntheticConfig, lake_root: str, progress: bool, unit: str = "ev"
    ) -> LakeWrite:
        """`write_lake` of every day, totalling the label and the oracle."""
        return write_lake(
            lake_root,
            self.days(config),
            self.schema,
            sum_columns=(self.label, self.oracle),
            expected_rows=config.events,
            unit=unit,
            progress=progress,
        )


@dataclass
class LakeWrite:
    """What `write_lake` wrote: rows, partitions, wall seconds and the column totals asked
    for."""

    rows: int = 0
    partitions: int = 0
    seconds: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)


def write_lake(
    lake_root: str,
    days: Iterable[tuple[date, Iterable[pa.Table]]],
    schema: pa.Schema,
    *,
    sum_columns: Sequence[str] = (),
    expected_rows: int | None = None,
    unit: str = "ev",
    progress: bool = True,
) -> LakeWrite:
    """Write each day's tables as `<lake_root>/events/day=YYYY-MM-DD/part-00000.parquet`,
    streaming chunk by chunk (peak memory is one chunk plus what the generator holds),
    totalling `sum_columns` on the way. Any previous `events/` is replaced as a whole once
    the new one is complete. With `progress`, a tqdm bar on stderr counts rows (of
    `expected_rows`) day by day. `days` is consumed inside the timing, so a generator that
    draws its population lazily is timed with it."""
    from tqdm.auto import tqdm  # lazy: only needed when actually generating

    started = time.perf_counter()
    fs, root = resolve(lake_root)
    fs.makedirs(root, exist_ok=True)
    out = LakeWrite(sums=dict.fromkeys(sum_columns, 0))
    with tqdm(total=expected_rows, unit=unit, unit_scale=True, disable=not progress) as bar:

        def counted(tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
            for table in tables:
                out.rows += table.num_rows
                for column in sum_columns:
                    out.sums[column] += pc.sum(table[column]).as_py()
                bar.update(table.num_rows)
                yield table

        with staged_events(fs, root) as staging:
            for day, tables in days:
                bar.set_description(f"day {day.isoformat()}")
                write_day(fs, staging, day, counted(tables), schema=schema)
                out.partitions += 1
    out.seconds = time.perf_counter() - started
    return out


def summary_fields(
    config: SyntheticConfig, lake_root: str, written: LakeWrite, events: int
) -> dict[str, Any]:
    """The `kubeloop.usecase.GenerationSummary` fields of a run that wrote `written`
    (`events`: the count the summary reports, the config's or the rows written)."""
    seconds = written.seconds
    return {
        "events": events,
        "days": config.days,
        "partitions": written.partitions,
        "scenario": config.scenario,
        "seconds": round(seconds, 3),
        "lake": str(lake_root),
        "seed": config.seed,
        "change_day": None if config.scenario == "baseline" else config.change_day,
        "events_per_second": round(events / seconds, 1) if seconds > 0 else float("inf"),
    }


# --- draws shared by the seeded generators ---------------------------------------------

SECOND_US = 1_000_000
MINUTE_US = 60 * SECOND_US
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US


def seeded_stream(seed: int, *key: int | str) -> np.random.Generator:
    """The PCG64 generator of (`seed`, `key`): every stream of a generator has its own, so
    a day's draws depend only on that day's world."""
    # crc32 rather than hash(): stable across processes and Python versions.
    spawn_key = tuple(zlib.crc32(k.encode()) if isinstance(k, str) else k for k in key)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=spawn_key)))


def day_stream(seed: int, day_index: int, name: str) -> np.random.Generator:
    """The stream `name` of day `day_index` (0-based): a day's draws depend on that day only."""
    return seeded_stream(seed, "day", day_index, name)


def minute_counts(seed: int, day_index: int, rows: int, hourly: Sequence[float]) -> np.ndarray:
    """How many of a day's `rows` fall in each of its 1440 minutes: one multinomial draw
    (the day's "clock" stream) over the relative traffic of each hour of the day, spread
    evenly over its minutes."""
    weights = np.asarray(hourly, dtype=np.float64)
    per_minute = np.repeat(weights / weights.sum() / 60.0, 60)
    return day_stream(seed, day_index, "clock").multinomial(rows, per_minute)


def minute_offsets(
    counts: np.ndarray, start: int, end: int, rng: np.random.Generator
) -> np.ndarray:
    """Sorted microseconds since midnight of the rows of minutes [start, end) (`counts`:
    rows per minute), each at a uniform instant of its minute drawn from `rng`."""
    minutes = np.repeat(np.arange(start, end, dtype=np.int64), counts[start:end])
    offsets = minutes * MINUTE_US + (rng.random(len(minutes)) * MINUTE_US).astype(np.int64)
    offsets.sort()
    return offsets


def epoch_us(day: date) -> int:
    """Midnight UTC starting `day`, in epoch microseconds."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * SECOND_US


def mix_probabilities(mix: Mapping[Any, float], vocab: Sequence[Any]) -> np.ndarray:
    """The mix's weights in vocabulary order (absent ones 0), normalised."""
    p = np.array([float(mix.get(v, 0.0)) for v in vocab])
    return p / p.sum()


def cdf_of(weights: np.ndarray) -> np.ndarray:
    """The cumulative distribution of `weights`, ending at exactly 1."""
    cdf = np.cumsum(weights, dtype=np.float64)
    cdf /= cdf[-1]
    # Guards searchsorted against a uniform just below 1 landing past the last bin.
    cdf[-1] = 1.0
    return cdf


def pick(cdf: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """The bin of each uniform under `cdf` (inverse-CDF sampling)."""
    return np.minimum(np.searchsorted(cdf, uniforms, side="right"), len(cdf) - 1)


def category_strings(vocab: Sequence[str], codes: np.ndarray) -> pa.Array:
    """Codes into `vocab` as a string array."""
    # A take from the small vocabulary array: no Python string per row.
    return pa.array(vocab, pa.string()).take(pa.array(codes))


def chunk_bounds(counts: np.ndarray, chunk_size: int) -> Iterator[tuple[int, int]]:
    """[start, end) runs of whole minutes (`counts`: rows per minute) of at most about
    `chunk_size` rows each (a single minute holding more is one run)."""
    # Chunks are runs of whole minutes, so sorting each chunk sorts the day.
    cum = np.concatenate([[0], np.cumsum(counts)])
    start = 0
    while start < len(counts):
        end = int(np.searchsorted(cum, cum[start] + chunk_size, side="right")) - 1
        end = max(end, start + 1)
        if cum[end] > cum[start]:
            yield start, end
        start = end
