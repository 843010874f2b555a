"""Seeded generator of card transactions whose true fraud probability is known.

A run draws a population once from the seed (cards with a home country, an activity
weight, a typical amount and a card-not-present habit; merchants with a country, a category,
a popularity and a latent risk), then streams the lake day by day. A day holds

* legitimate traffic: times from a daily profile, a card by activity, a merchant by
  popularity (mostly in the card's own country), a channel and an amount around the card's
  typical amount;
* compromise episodes: a card is taken over for a few hours and used in a burst, at risky
  merchants, mostly online and abroad, for amounts well above its habit (`Episodes`).

Every transaction's fraud probability comes from `fraud_logit` (kept in `fraud_probability`
for oracle scores only, never a feature); the label is drawn from it, and a fraud is
confirmed by a chargeback days later (`chargeback_timestamp`), which is when the features may
first count it.

Randomness: every (seed, day, stream) has its own PCG64 generator, and each stream draws
only uniforms consumed row after row (normals through the inverse CDF), so the same config
gives the same bytes, a day depends only on that day's world (days before a scenario's
change equal the baseline's), and `chunk_size` only changes how rows are batched.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field
from scipy.special import ndtri

from kubeloop.data.synthetic import (
    DAY_US,
    HOUR_US,
    MINUTE_US,
    DayClock,
    DayGenerator,
    category_strings,
    cdf_of,
    chunk_bounds,
    day_stream,
    minute_offsets,
    mix_probabilities,
    pick,
    seeded_stream,
    summary_fields,
)
from kubeloop.usecase import GenerationSummary as BaseGenerationSummary
from kubeloop.usecase import SyntheticConfig
from usecases.fraud.scenarios import (
    BASELINE_FRAUD_MODEL,
    BASELINE_POPULATION,
    CARD_NOT_PRESENT,
    CATEGORIES,
    CHANNELS,
    CHARGEBACK_DELAY_LOG_MEAN,
    CHARGEBACK_DELAY_LOG_SIGMA,
    COUNTRIES,
    SCENARIOS,
    Episodes,
    FraudModel,
    PopulationMix,
    Traffic,
)
from usecases.fraud.schema import EVENT_SCHEMA, LABEL, ORACLE, TIMESTAMP

ScenarioName = Literal["baseline", "new_fraud_pattern", "merchant_mix_shift"]

MINUTES_PER_DAY = 24 * 60
# Typical amount of a category relative to a card's habit (a flight costs more than fuel).
CATEGORY_AMOUNT_SCALE = {
    "grocery": 1.0, "fuel": 1.1, "restaurant": 0.8, "retail": 1.3,
    "electronics": 3.0, "travel": 4.0, "digital_goods": 0.6, "gambling": 1.5,
}  # fmt: skip
ONLINE_ONLY = ("digital_goods",)


class GeneratorConfig(SyntheticConfig):
    """What to generate. Every field has a default; the defaults make a ~200k-row lake."""

    events: int = Field(
        200_000,
        gt=0,
        description="Legitimate transactions over all days (compromise episodes add ~1%).",
    )
    days: int = Field(14, gt=0, description="Number of daily partitions.")
    cards: int = Field(10_000, gt=0, description="Number of payment cards.")
    merchants: int = Field(800, gt=0, description="Number of merchants.")
    seed: int = Field(11, ge=0, description="Seed of every random draw.")
    scenario: ScenarioName = Field("baseline", description="Named change from change_day on.")
    change_day: int = Field(
        10, gt=0, description="0-based index of the first changed day (ignored by baseline)."
    )


class GenerationSummary(BaseGenerationSummary):
    """What `generate_lake` did, with the lake's fraud rate and mean fraud probability."""

    fraud_rate: float
    mean_fraud_probability: float
    frauds: int

    def label_stats(self) -> dict[str, float]:
        return {
            "fraud_rate": self.fraud_rate,
            "mean_fraud_probability": self.mean_fraud_probability,
            "frauds": self.frauds,
        }


@dataclass(frozen=True)
class Population:
    """Cards and merchants drawn once from the seed; ids are indices into these arrays.
    Countries and categories are codes into `usecases.fraud.scenarios`' vocabularies."""

    card_country: np.ndarray
    card_activity: np.ndarray
    card_amount: np.ndarray  # typical amount
    card_cnp: np.ndarray  # share of legitimate use that is card not present
    merchant_country: np.ndarray
    merchant_category: np.ndarray
    merchant_popularity: np.ndarray
    merchant_risk: np.ndarray  # latent logit effect

    @property
    def cards(self) -> int:
        return len(self.card_country)

    @property
    def merchants(self) -> int:
        return len(self.merchant_country)


def _normal(rng: np.random.Generator, n: int) -> np.ndarray:
    # Through the inverse CDF of uniforms, so a stream is consumed the same per row
    # whatever the batching.
    return ndtri(np.clip(rng.random(n), 1e-12, 1 - 1e-12))


def build_population(
    config: GeneratorConfig, mix: PopulationMix = BASELINE_POPULATION
) -> Population:
    """Draw the cards and merchants of `config` (the same for every scenario)."""
    c = seeded_stream(config.seed, "population", "cards")
    n = config.cards
    country_p = mix_probabilities(mix.country_mix, COUNTRIES)
    card_country = np.searchsorted(np.cumsum(country_p), c.random(n) * 0.999999).astype(np.int8)
    card_activity = np.exp(mix.card_activity_sigma * _normal(c, n))
    card_amount = np.exp(mix.card_amount_log_mean + mix.card_amount_log_sigma * _normal(c, n))
    lo, hi = mix.card_cnp_share
    card_cnp = lo + (hi - lo) * c.random(n)

    m = seeded_stream(config.seed, "population", "merchants")
    k = config.merchants
    merchant_country = np.searchsorted(np.cumsum(country_p), m.random(k) * 0.999999).astype(np.int8)
    cat_p = mix_probabilities(mix.category_mix, CATEGORIES)
    merchant_category = np.searchsorted(np.cumsum(cat_p), m.random(k) * 0.999999).astype(np.int8)
    merchant_popularity = np.exp(mix.merchant_popularity_sigma * _normal(m, k))
    merchant_risk = mix.merchant_risk_std * _normal(m, k)
    return Population(
        card_country=card_country,
        card_activity=card_activity,
        card_amount=card_amount,
        card_cnp=card_cnp,
        merchant_country=merchant_country,
        merchant_category=merchant_category,
        merchant_popularity=merchant_popularity,
        merchant_risk=merchant_risk,
    )


def fraud_logit(
    model: FraudModel,
    population: Population,
    *,
    card: np.ndarray,
    merchant: np.ndarray,
    cnp: np.ndarray,
    hour: np.ndarray,
    amount: np.ndarray,
    compromised: np.ndarray,
) -> np.ndarray:
    """The logit of the true fraud probability (see `FraudModel`): the one implementation
    generation and the oracle share. `compromised` is each row's episode boost (0 outside
    an episode)."""
    category_risk = np.array([float(model.category_risk.get(c, 0.0)) for c in CATEGORIES])
    cat = population.merchant_category[merchant]
    z = model.intercept + category_risk[cat] + population.merchant_risk[merchant]
    z = z + model.cnp * cnp
    z = z + model.abroad * (population.merchant_country[merchant] != population.card_country[card])
    z = z + model.night * (hour < 6)
    ratio = np.maximum(amount, 1) / population.card_amount[card]
    z = z + model.amount_slope * np.clip(np.log(ratio), -2.0, 3.0)
    return z + compromised


@dataclass(frozen=True)
class _MerchantChooser:
    """Merchants by weight, overall and within each country."""

    all_cdf: np.ndarray
    by_country: tuple[tuple[np.ndarray, np.ndarray], ...]  # (members, cdf) per country code

    @classmethod
    def of(cls, population: Population, weights: np.ndarray) -> _MerchantChooser:
        groups = []
        for code in range(len(COUNTRIES)):
            members = np.flatnonzero(population.merchant_country == code)
            if len(members) == 0:  # a tiny population may lack a country: use everyone
                members = np.arange(population.merchants)
            groups.append((members, cdf_of(weights[members])))
        return cls(cdf_of(weights), tuple(groups))

    def choose(self, home: np.ndarray, abroad: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One merchant per row: anywhere when `abroad`, else in the `home` country."""
        out = pick(self.all_cdf, u)
        for code, (members, cdf) in enumerate(self.by_country):
            rows = ~abroad & (home == code)
            if rows.any():
                out[rows] = members[pick(cdf, u[rows])]
        return out


def _category_weights(population: Population, weights: Mapping[str, float]) -> np.ndarray:
    w = np.array([float(weights.get(c, 1.0)) for c in CATEGORIES])
    return population.merchant_popularity * w[population.merchant_category]


def _amounts(population: Population, card: np.ndarray, merchant: np.ndarray, factor: np.ndarray):
    scale = np.array([CATEGORY_AMOUNT_SCALE[c] for c in CATEGORIES])
    raw = population.card_amount[card] * scale[population.merchant_category[merchant]] * factor
    return np.maximum(np.rint(raw), 1).astype(np.int64)


@dataclass(frozen=True)
class _Rows:
    """Transactions before their labels: times since midnight and the drawn inputs."""

    since_midnight: np.ndarray
    card: np.ndarray
    merchant: np.ndarray
    cnp: np.ndarray
    amount: np.ndarray
    compromised: np.ndarray  # the episode style's logit boost, 0 when legitimate

    def take(self, idx: np.ndarray) -> _Rows:
        return _Rows(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: Sequence[_Rows]) -> _Rows:
        return _Rows(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in _Rows.__dataclass_fields__)
        )


def _episodes(
    config: GeneratorConfig, population: Population, episodes: Episodes, day_index: int
) -> _Rows:
    """The day's compromise episodes, every transaction of them, sorted by time."""
    rng = day_stream(config.seed, day_index, "episodes")
    n_episodes = int(rng.poisson(episodes.rate * population.cards))
    if n_episodes == 0 or not episodes.styles:
        return _Rows(
            *(np.zeros(0, dtype=t) for t in (np.int64,) * 3 + (bool, np.int64, np.float64))
        )
    shares = np.array([s for s, _ in episodes.styles])
    style = pick(cdf_of(shares), rng.random(n_episodes))
    card = rng.integers(0, population.cards, n_episodes)
    hours = episodes.min_hours + (episodes.max_hours - episodes.min_hours) * rng.random(n_episodes)
    # An episode may run past midnight: its later rows belong to the next day's partition
    # (`_day_episodes`).
    start = rng.random(n_episodes) * DAY_US
    counts = 2 + rng.poisson(episodes.mean_extra_txns, n_episodes)
    # Every transaction of the episodes, episode by episode.
    ep = np.repeat(np.arange(n_episodes), counts)
    n = len(ep)
    since = (start[ep] + rng.random(n) * hours[ep] * HOUR_US).astype(np.int64)
    card_rows = card[ep]
    style_rows = style[ep]
    u = rng.random((n, 4))
    merchant = np.zeros(n, dtype=np.int64)
    cnp = np.zeros(n, dtype=bool)
    factor = np.zeros(n)
    boost = np.zeros(n)
    risk = np.exp(episodes.risk_affinity * population.merchant_risk)
    for s, (_, spec) in enumerate(episodes.styles):
        rows = style_rows == s
        if not rows.any():
            continue
        chooser = _MerchantChooser.of(
            population, _category_weights(population, spec.category_weight) * risk
        )
        abroad = u[rows, 0] < spec.abroad_share
        home = population.card_country[card_rows[rows]]
        merchant[rows] = chooser.choose(home, abroad, u[rows, 1])
        cnp[rows] = u[rows, 2] < spec.cnp_share
        z = ndtri(np.clip(u[rows, 3], 1e-12, 1 - 1e-12))
        factor[rows] = np.exp(spec.amount_log_mean + spec.amount_log_sigma * z)
        boost[rows] = spec.compromised
    online = np.isin(
        population.merchant_category[merchant], [CATEGORIES.index(c) for c in ONLINE_ONLY]
    )
    cnp |= online
    rows = _Rows(
        since_midnight=since,
        card=card_rows.astype(np.int64),
        merchant=merchant,
        cnp=cnp,
        amount=_amounts(population, card_rows, merchant, factor),
        compromised=boost,
    )
    return rows.take(np.argsort(rows.since_midnight, kind="stable"))


def _day_episodes(config: GeneratorConfig, population: Population, day_index: int) -> _Rows:
    """Episode rows of day `day_index`: its own episodes' rows before midnight and the
    previous day's rows that ran past it (each day's episodes come from that day's stream,
    so the overlap does not depend on how days are batched)."""
    scenario = SCENARIOS[config.scenario]
    today = _episodes(
        config, population, scenario.episodes_on(day_index, config.change_day), day_index
    )
    parts = [today.take(np.flatnonzero(today.since_midnight < DAY_US))]
    if day_index > 0:
        before = day_index - 1
        spill = _episodes(
            config, population, scenario.episodes_on(before, config.change_day), before
        )
        late = spill.take(
            np.flatnonzero((spill.since_midnight >= DAY_US) & (spill.since_midnight < 2 * DAY_US))
        )
        parts.insert(0, replace(late, since_midnight=late.since_midnight - DAY_US))
    rows = _Rows.concat(parts)
    return rows.take(np.argsort(rows.since_midnight, kind="stable"))


@dataclass(frozen=True)
class _DayPlan:
    """Everything fixed for one day before its legitimate rows are drawn."""

    clock: DayClock  # its minute_counts: legitimate transactions per minute
    episodes: _Rows
    card_cdf: np.ndarray
    merchants: _MerchantChooser
    traffic: Traffic
    model: FraudModel

    @property
    def rows(self) -> int:
        return int(self.clock.minute_counts.sum()) + len(self.episodes.card)


def _plan_day(
    config: GeneratorConfig, population: Population, day_index: int, first_event_id: int, n: int
) -> _DayPlan:
    scenario = SCENARIOS[config.scenario]
    traffic = scenario.traffic_on(day_index, config.change_day)
    return _DayPlan(
        clock=DayClock.of(config, day_index, first_event_id, n, traffic.hourly_traffic),
        episodes=_day_episodes(config, population, day_index),
        card_cdf=cdf_of(population.card_activity),
        merchants=_MerchantChooser.of(
            population, _category_weights(population, traffic.category_weight)
        ),
        traffic=traffic,
        model=BASELINE_FRAUD_MODEL,
    )


def _legit_rows(
    plan: _DayPlan, population: Population, rng: Mapping[str, np.random.Generator], m0: int, m1: int
) -> _Rows:
    since = minute_offsets(plan.clock.minute_counts, m0, m1, rng["time"])
    n = len(since)
    card = pick(plan.card_cdf, rng["card"].random(n))
    u = rng["merchant"].random((n, 2))
    merchant = plan.merchants.choose(
        population.card_country[card], u[:, 0] < plan.traffic.abroad_share, u[:, 1]
    )
    online = np.isin(
        population.merchant_category[merchant], [CATEGORIES.index(c) for c in ONLINE_ONLY]
    )
    cnp = online | (rng["channel"].random(n) < population.card_cnp[card] + plan.traffic.cnp_shift)
    factor = np.exp(0.5 * _normal(rng["amount"], n))
    return _Rows(
        since_midnight=since,
        card=card.astype(np.int64),
        merchant=merchant.astype(np.int64),
        cnp=cnp,
        amount=_amounts(population, card, merchant, factor),
        compromised=np.zeros(n),
    )


def _day_tables(
    config: GeneratorConfig, population: Population, plan: _DayPlan
) -> Iterator[pa.Table]:
    clock = plan.clock
    rng = clock.streams(
        config.seed, "time", "card", "merchant", "channel", "amount", "label", "chargeback"
    )
    episode_minutes = np.bincount(
        plan.episodes.since_midnight // MINUTE_US, minlength=MINUTES_PER_DAY
    )
    event_id = clock.first_event_id
    for m0, m1 in chunk_bounds(clock.minute_counts + episode_minutes, config.chunk_size):
        legit = _legit_rows(plan, population, rng, m0, m1)
        in_chunk = (plan.episodes.since_midnight >= m0 * MINUTE_US) & (
            plan.episodes.since_midnight < m1 * MINUTE_US
        )
        both = _Rows.concat([legit, plan.episodes.take(np.flatnonzero(in_chunk))])
        rows = both.take(np.argsort(both.since_midnight, kind="stable"))
        n = len(rows.card)
        hour = rows.since_midnight // HOUR_US
        z = fraud_logit(
            plan.model,
            population,
            card=rows.card,
            merchant=rows.merchant,
            cnp=rows.cnp,
            hour=hour,
            amount=rows.amount,
            compromised=rows.compromised,
        )
        p = 1.0 / (1.0 + np.exp(-z))
        fraud = rng["label"].random(n) < p
        delay_days = 1.0 + np.exp(
            CHARGEBACK_DELAY_LOG_MEAN + CHARGEBACK_DELAY_LOG_SIGMA * _normal(rng["chargeback"], n)
        )
        ts = clock.day_us + rows.since_midnight
        chargeback = pa.array(
            (ts + (delay_days * DAY_US).astype(np.int64)), type=TIMESTAMP, mask=~fraud
        )
        yield pa.Table.from_arrays(
            [
                pa.array(np.arange(event_id, event_id + n, dtype=np.int64)),
                pa.array(ts, type=TIMESTAMP),
                pa.array(rows.card),
                pa.array(rows.merchant),
                category_strings(COUNTRIES, population.card_country[rows.card]),
                category_strings(CATEGORIES, population.merchant_category[rows.merchant]),
                pa.array(rows.amount),
                pa.array(hour),
                category_strings(CHANNELS, np.where(rows.cnp, CARD_NOT_PRESENT, 0)),
                category_strings(COUNTRIES, population.merchant_country[rows.merchant]),
                pa.array(fraud.astype(np.int64)),
                chargeback,
                pa.array(p),
            ],
            schema=EVENT_SCHEMA,
        )
        event_id += n


def _iter_plans(config: GeneratorConfig, population: Population) -> Iterator[_DayPlan]:
    first = 0
    for day_index, n in enumerate(config.day_sizes()):
        plan = _plan_day(config, population, day_index, first, n)
        yield plan
        first += plan.rows


def iter_day_tables(config: GeneratorConfig) -> Iterator[tuple[date, pa.Table]]:
    """Yield the lake's transactions in time order as `(day, table)` pairs, one pair per
    chunk of at most about `config.chunk_size` rows; a day's tables concatenated are exactly
    the rows `generate_lake` writes for it (schema `EVENT_SCHEMA`)."""
    return DAYS.iter_day_tables(config)


def generate_lake(
    config: GeneratorConfig, lake_root: str, progress: bool = True
) -> GenerationSummary:
    """Generate the lake of `config` under `lake_root` (a local path or an fsspec URL):
    `<lake_root>/events/day=YYYY-MM-DD/part-00000.parquet` per day, streamed chunk by chunk
    (peak memory is one chunk plus the population), swapped in whole when complete."""
    written = DAYS.write(config, lake_root, progress, unit="tx")
    rows = written.rows
    return GenerationSummary(
        **summary_fields(config, lake_root, written, rows),
        fraud_rate=written.sums[LABEL] / rows,
        mean_fraud_probability=written.sums[ORACLE] / rows,
        frauds=written.sums[LABEL],
    )


# The generator's parts for the engine's day stream and lake writer (kubeloop.data.synthetic).
DAYS = DayGenerator(build_population, _iter_plans, _day_tables, EVENT_SCHEMA, LABEL, ORACLE)
