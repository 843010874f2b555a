"""Seeded generator of ad impressions whose true click probability is known.

A run draws a population once from the seed (users with a segment, a country, a preferred
device, an activity weight and a latent effect; ads with an advertiser, a category, a launch
time, a popularity weight and a latent effect), then streams the lake day by day. Each
impression samples a time of day from a daily traffic profile, a user by activity, an ad by
popularity, a device and a slot, and finally a click from the true probability computed by
`true_click_probability` (stored in `true_ctr` for oracle scores only).

Randomness: every (seed, day, stream) has its own PCG64 generator derived with
`numpy.random.SeedSequence`, and each stream only ever draws uniforms (or one multinomial
per day), consumed row after row. Hence

- the same config gives the same bytes, and a day's data depends only on that day's
  parameters (days before a scenario's `change_day` equal the baseline's);
- labels come from their own stream, so changing the click model leaves every input column
  unchanged, and changing the input mix leaves the label uniforms unchanged;
- `chunk_size` only changes how rows are batched, never their values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from kubeloop.data.synthetic import (
    DAY_US,
    HOUR_US,
    DayClock,
    DayGenerator,
    category_strings,
    cdf_of,
    chunk_bounds,
    epoch_us,
    minute_offsets,
    mix_probabilities,
    pick,
    seeded_stream,
    summary_fields,
)
from kubeloop.usecase import GenerationSummary as BaseGenerationSummary
from kubeloop.usecase import SyntheticConfig
from usecases.ctr.scenarios import (
    BASELINE_CLICK_MODEL,
    BASELINE_POPULATION,
    CATEGORIES,
    COUNTRIES,
    DEVICES,
    SCENARIOS,
    SEGMENTS,
    SLOTS,
    ClickModel,
    PopulationMix,
    Scenario,
    Traffic,
)
from usecases.ctr.schema import EVENT_SCHEMA, LABEL, ORACLE, TIMESTAMP

ScenarioName = Literal["baseline", "covariate_shift", "concept_drift", "new_ads"]


class GeneratorConfig(SyntheticConfig):
    """What to generate. Every field has a default; the defaults make a ~600k-event lake."""

    # 600k is the demo default: at 300k LightGBM only just reached 0.97 x oracle AUC.
    events: int = Field(600_000, gt=0, description="Total impressions over all days.")
    days: int = Field(14, gt=0, description="Number of daily partitions.")
    users: int = Field(4_000, gt=0, description="Size of the user population.")
    ads: int = Field(600, gt=0, description="Number of ads running from the first day.")
    advertisers: int = Field(60, gt=0, description="Number of advertisers owning the ads.")
    seed: int = Field(7, ge=0, description="Seed of every random draw.")
    scenario: ScenarioName = Field(
        "baseline", description="Named change applied from change_day on."
    )
    change_day: int = Field(
        10,
        gt=0,
        description="0-based index of the first day the scenario changes (ignored by baseline).",
    )
    new_ads: int = Field(150, gt=0, description="Size of the new-ads wave (scenario new_ads).")


class GenerationSummary(BaseGenerationSummary):
    """What `generate_lake` did, with the lake's click rate and mean true click
    probability (the run report's `data` section shows both)."""

    click_rate: float
    mean_true_ctr: float

    def label_stats(self) -> dict[str, float]:
        return {"click_rate": self.click_rate, "mean_true_ctr": self.mean_true_ctr}


@dataclass(frozen=True)
class Population:
    """Users and ads drawn once from the seed; ids are indices into these arrays.

    Categorical attributes are integer codes into the vocabularies of
    `usecases.ctr.scenarios`. Ads `[0, base_ads)` run from the first day; ads
    `[base_ads, base_ads + new_ads)` are the new-ads wave, launched at `change_day`
    (drawn for every scenario, shown only by `new_ads`). Latent effects are in logit units.
    A creative's age is the time since `ad_launch_us` modulo `creative_refresh_days`.
    """

    user_segment: np.ndarray
    user_country: np.ndarray
    user_device_pref: np.ndarray
    user_activity: np.ndarray
    user_latent: np.ndarray
    ad_advertiser: np.ndarray
    ad_category: np.ndarray
    ad_launch_us: np.ndarray
    ad_popularity: np.ndarray
    ad_latent: np.ndarray
    base_ads: int
    creative_refresh_days: float

    @property
    def users(self) -> int:
        return len(self.user_segment)

    @property
    def ads(self) -> int:
        return len(self.ad_category)


def build_population(
    config: GeneratorConfig, mix: PopulationMix = BASELINE_POPULATION
) -> Population:
    """Draw the users, advertisers and ads of `config` (the same for every scenario).

    Users, advertisers, ads and the new-ads wave use separate streams, so e.g. changing
    `new_ads` does not change the existing ads.
    """
    seed = config.seed
    u = seeded_stream(seed, "population", "users")
    n_users = config.users
    user_segment = u.choice(
        len(SEGMENTS), n_users, p=mix_probabilities(mix.segment_mix, SEGMENTS)
    ).astype(np.int8)
    user_country = u.choice(
        len(COUNTRIES), n_users, p=mix_probabilities(mix.country_mix, COUNTRIES)
    ).astype(np.int8)
    user_device_pref = u.choice(
        len(DEVICES), n_users, p=mix_probabilities(mix.device_pref_mix, DEVICES)
    ).astype(np.int8)
    user_activity = u.lognormal(0.0, mix.user_activity_sigma, n_users)
    user_latent = u.normal(0.0, mix.user_latent_std, n_users)

    v = seeded_stream(seed, "population", "advertisers")
    advertiser_category = v.integers(0, len(CATEGORIES), config.advertisers).astype(np.int8)
    advertiser_latent = v.normal(0.0, mix.advertiser_latent_std, config.advertisers)

    start_us = epoch_us(config.start_date)

    def draw_ads(name: str, n: int, launch_us: int | None) -> tuple[np.ndarray, ...]:
        # launch_us None: running before the first day, launched at a random past date.
        a = seeded_stream(seed, "population", name)
        advertiser = a.integers(0, config.advertisers, n)
        popularity = a.lognormal(0.0, mix.ad_popularity_sigma, n)
        latent = advertiser_latent[advertiser] + a.normal(0.0, mix.ad_latent_std, n)
        if launch_us is None:
            age_days = a.uniform(0.0, mix.creative_refresh_days, n)
            launch = (start_us - age_days * DAY_US).astype(np.int64)
        else:
            launch = np.full(n, launch_us, dtype=np.int64)
        return advertiser, popularity, latent, launch

    base = draw_ads("ads", config.ads, None)
    wave = draw_ads("new_ads", config.new_ads, start_us + config.change_day * DAY_US)
    advertiser, popularity, latent, launch = (np.concatenate(pair) for pair in zip(base, wave))
    return Population(
        user_segment=user_segment,
        user_country=user_country,
        user_device_pref=user_device_pref,
        user_activity=user_activity,
        user_latent=user_latent,
        ad_advertiser=advertiser.astype(np.int64),
        ad_category=advertiser_category[advertiser],
        ad_launch_us=launch,
        ad_popularity=popularity,
        ad_latent=latent,
        base_ads=config.ads,
        creative_refresh_days=mix.creative_refresh_days,
    )


@dataclass(frozen=True)
class _Coefficients:
    """A ClickModel as arrays indexed by vocabulary codes."""

    intercept: float
    segment: np.ndarray
    category: np.ndarray
    affinity: np.ndarray  # [segment, category]
    country: np.ndarray
    device: np.ndarray
    position_slope: np.ndarray
    preferred_device_bonus: float
    hour_amplitude: float
    hour_peak: float
    weekend: float
    fatigue: float
    fatigue_days: float

    @classmethod
    def of(cls, model: ClickModel) -> _Coefficients:
        def vec(mapping: Mapping[str, float], vocab: Sequence[str]) -> np.ndarray:
            return np.array([float(mapping.get(v, 0.0)) for v in vocab])

        affinity = np.zeros((len(SEGMENTS), len(CATEGORIES)))
        for (seg, cat), value in model.affinity.items():
            affinity[SEGMENTS.index(seg), CATEGORIES.index(cat)] = value
        return cls(
            intercept=model.intercept,
            segment=vec(model.segment, SEGMENTS),
            category=vec(model.category, CATEGORIES),
            affinity=affinity,
            country=vec(model.country, COUNTRIES),
            device=vec(model.device, DEVICES),
            position_slope=vec(model.position_slope, DEVICES),
            preferred_device_bonus=model.preferred_device_bonus,
            hour_amplitude=model.hour_amplitude,
            hour_peak=model.hour_peak,
            weekend=model.weekend,
            fatigue=model.fatigue,
            fatigue_days=model.fatigue_days,
        )


def _probability_from_codes(
    c: _Coefficients,
    population: Population,
    *,
    user: np.ndarray,
    ad: np.ndarray,
    segment: np.ndarray,
    country: np.ndarray,
    device_pref: np.ndarray,
    category: np.ndarray,
    age_days: np.ndarray,
    hour: np.ndarray,
    weekday: np.ndarray,
    device: np.ndarray,
    slot: np.ndarray,
) -> np.ndarray:
    # The single implementation of the true model: generation and
    # `true_click_probability` both end here, so the oracle cannot drift from the data.
    z = c.intercept + c.segment[segment] + c.category[category] + c.affinity[segment, category]
    z += c.country[country] + c.device[device]
    z -= c.position_slope[device] * (slot - 1)
    z += c.preferred_device_bonus * (device == device_pref)
    z += c.hour_amplitude * np.cos(2.0 * np.pi * (hour - c.hour_peak) / 24.0)
    z += c.weekend * (weekday >= 5)
    z -= c.fatigue * (1.0 - np.exp(-age_days / c.fatigue_days))
    z += population.user_latent[user] + population.ad_latent[ad]
    return 1.0 / (1.0 + np.exp(-z))


def _column(events: Any, name: str) -> Any:
    try:
        return events[name]
    except (KeyError, IndexError) as exc:
        raise ValueError(f"true_click_probability needs column {name!r}") from exc


def _as_numpy(values: Any) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_numpy()
    return np.asarray(values)


def _codes(values: Any, vocab: Sequence[str], name: str) -> np.ndarray:
    arr = (
        values
        if isinstance(values, (pa.Array, pa.ChunkedArray))
        else pa.array(np.asarray(values, dtype=object))
    )
    idx = pc.index_in(arr, value_set=pa.array(list(vocab)))
    if idx.null_count:
        unknown = pc.unique(pc.filter(arr, pc.is_null(idx))).to_pylist()[:5]
        raise ValueError(f"column {name!r} has values outside {list(vocab)}: {unknown}")
    return idx.to_numpy()


def _ids(values: Any, limit: int, name: str) -> np.ndarray:
    ids = _as_numpy(values).astype(np.int64, copy=False)
    if len(ids) and (ids.min() < 0 or ids.max() >= limit):
        raise ValueError(f"column {name!r} has ids outside the population [0, {limit})")
    return ids


def true_click_probability(
    events: pa.Table | pa.RecordBatch | Mapping[str, Any],
    population: Population,
    model: ClickModel = BASELINE_CLICK_MODEL,
) -> np.ndarray:
    """The true click probability of each impression under `model`.

    `events` has the event-schema columns (a pyarrow Table/RecordBatch, a pandas
    DataFrame or a dict of arrays); it needs user_id, ad_id, user_segment, user_country,
    user_device_pref, ad_category, ad_creative_age_days, hour, weekday, device and
    slot_position. `population` must be the one the events were drawn from
    (`build_population(config)`), for the latent effects of their users and ads. Under the
    model in effect on the event's day this equals the generated `true_ctr` exactly.
    """
    return _probability_from_codes(
        _Coefficients.of(model),
        population,
        user=_ids(_column(events, "user_id"), population.users, "user_id"),
        ad=_ids(_column(events, "ad_id"), population.ads, "ad_id"),
        segment=_codes(_column(events, "user_segment"), SEGMENTS, "user_segment"),
        country=_codes(_column(events, "user_country"), COUNTRIES, "user_country"),
        device_pref=_codes(_column(events, "user_device_pref"), DEVICES, "user_device_pref"),
        category=_codes(_column(events, "ad_category"), CATEGORIES, "ad_category"),
        age_days=_as_numpy(_column(events, "ad_creative_age_days")).astype(np.float64, copy=False),
        hour=_as_numpy(_column(events, "hour")).astype(np.int64, copy=False),
        weekday=_as_numpy(_column(events, "weekday")).astype(np.int64, copy=False),
        device=_codes(_column(events, "device"), DEVICES, "device"),
        slot=_as_numpy(_column(events, "slot_position")).astype(np.int64, copy=False),
    )


def click_model_on(config: GeneratorConfig, day_index: int) -> ClickModel:
    """The true click model the generator uses on day `day_index` of `config`."""
    return SCENARIOS[config.scenario].click_model_on(day_index, config.change_day)


@dataclass(frozen=True)
class _DayPlan:
    """Everything fixed for one day before its rows are drawn."""

    clock: DayClock  # its minute_counts: impressions in each minute of the day
    user_cdf: np.ndarray
    ad_cdf: np.ndarray
    device_cdf: np.ndarray
    slot_cdf: np.ndarray
    preferred_device_share: float
    coefficients: _Coefficients


def _user_weights(population: Population, traffic: Traffic) -> np.ndarray:
    boost = np.array([float(traffic.country_activity.get(c, 1.0)) for c in COUNTRIES])
    return population.user_activity * boost[population.user_country]


def _ad_cdf(population: Population, traffic: Traffic) -> np.ndarray:
    base = population.ad_popularity[: population.base_ads]
    share = traffic.new_ads_share
    if share <= 0.0:
        return cdf_of(base)
    wave = population.ad_popularity[population.base_ads :]
    # One uniform picks from the mixture: (1 - share) of the mass over the existing ads,
    # `share` over the wave. Ids of the wave follow the existing ones in the array.
    return cdf_of(np.concatenate([(1.0 - share) * base / base.sum(), share * wave / wave.sum()]))


def _plan_day(
    config: GeneratorConfig,
    population: Population,
    scenario: Scenario,
    day_index: int,
    first_event_id: int,
    n: int,
) -> _DayPlan:
    traffic = scenario.traffic_on(day_index, config.change_day)
    return _DayPlan(
        clock=DayClock.of(config, day_index, first_event_id, n, traffic.hourly_traffic),
        user_cdf=cdf_of(_user_weights(population, traffic)),
        ad_cdf=_ad_cdf(population, traffic),
        device_cdf=cdf_of(mix_probabilities(traffic.device_mix, DEVICES)),
        slot_cdf=cdf_of(mix_probabilities(traffic.slot_mix, SLOTS)),
        preferred_device_share=traffic.preferred_device_share,
        coefficients=_Coefficients.of(scenario.click_model_on(day_index, config.change_day)),
    )


def _day_tables(
    config: GeneratorConfig, population: Population, plan: _DayPlan
) -> Iterator[pa.Table]:
    clock = plan.clock
    rng = clock.streams(config.seed, "time", "user", "ad", "device", "slot", "label")
    slots = np.asarray(SLOTS, dtype=np.int64)
    weekday = clock.day.weekday()
    event_id = clock.first_event_id
    for m0, m1 in chunk_bounds(clock.minute_counts, config.chunk_size):
        since_midnight = minute_offsets(clock.minute_counts, m0, m1, rng["time"])
        n = len(since_midnight)
        ts = clock.day_us + since_midnight
        hour = since_midnight // HOUR_US

        user = pick(plan.user_cdf, rng["user"].random(n))
        ad = pick(plan.ad_cdf, rng["ad"].random(n))
        u_device = rng["device"].random((n, 2))
        device_pref = population.user_device_pref[user]
        device = np.where(
            u_device[:, 0] < plan.preferred_device_share,
            device_pref,
            pick(plan.device_cdf, u_device[:, 1]).astype(np.int8),
        )
        slot = slots[pick(plan.slot_cdf, rng["slot"].random(n))]
        age_days = np.mod(
            (ts - population.ad_launch_us[ad]) / DAY_US, population.creative_refresh_days
        )
        weekdays = np.full(n, weekday, dtype=np.int64)

        segment = population.user_segment[user]
        country = population.user_country[user]
        category = population.ad_category[ad]
        p = _probability_from_codes(
            plan.coefficients,
            population,
            user=user,
            ad=ad,
            segment=segment,
            country=country,
            device_pref=device_pref,
            category=category,
            age_days=age_days,
            hour=hour,
            weekday=weekdays,
            device=device,
            slot=slot,
        )
        click = (rng["label"].random(n) < p).astype(np.int64)

        yield pa.Table.from_arrays(
            [
                pa.array(np.arange(event_id, event_id + n, dtype=np.int64)),
                pa.array(ts, type=TIMESTAMP),
                pa.array(user.astype(np.int64)),
                pa.array(ad.astype(np.int64)),
                category_strings(SEGMENTS, segment),
                category_strings(COUNTRIES, country),
                category_strings(DEVICES, device_pref),
                pa.array(population.ad_advertiser[ad]),
                category_strings(CATEGORIES, category),
                pa.array(age_days),
                pa.array(hour),
                pa.array(weekdays),
                category_strings(DEVICES, device),
                pa.array(slot),
                pa.array(click),
                pa.array(p),
            ],
            schema=EVENT_SCHEMA,
        )
        event_id += n


def _iter_plans(config: GeneratorConfig, population: Population) -> Iterator[_DayPlan]:
    scenario = SCENARIOS[config.scenario]
    first = 0
    for day_index, n in enumerate(config.day_sizes()):
        yield _plan_day(config, population, scenario, day_index, first, n)
        first += n


def iter_day_tables(config: GeneratorConfig) -> Iterator[tuple[date, pa.Table]]:
    """Yield the lake's events in time order as `(day, table)` pairs, one pair per chunk.

    A day comes as one or more consecutive tables of at most `config.chunk_size` rows (see
    `GeneratorConfig.chunk_size`), so memory stays bounded; concatenating a day's tables
    gives exactly the rows `generate_lake` writes for it. Tables have `EVENT_SCHEMA`.
    """
    return DAYS.iter_day_tables(config)


def generate_lake(
    config: GeneratorConfig, lake_root: str, progress: bool = True
) -> GenerationSummary:
    """Generate the lake of `config` under `lake_root` (a local path or an fsspec URL).

    Writes `<lake_root>/events/day=YYYY-MM-DD/part-00000.parquet` for every day, streaming
    chunk by chunk (peak memory is one chunk plus the population, whatever the number of
    days). Any previous `events/` is replaced as a whole once the new one is complete. With
    `progress`, a tqdm bar on stderr counts events (and events/s) day by day.
    """
    written = DAYS.write(config, lake_root, progress)
    return GenerationSummary(
        **summary_fields(config, lake_root, written, config.events),
        click_rate=written.sums[LABEL] / config.events,
        mean_true_ctr=written.sums[ORACLE] / config.events,
    )


# The generator's parts for the engine's day stream and lake writer (kubeloop.data.synthetic).
DAYS = DayGenerator(build_population, _iter_plans, _day_tables, EVENT_SCHEMA, LABEL, ORACLE)
