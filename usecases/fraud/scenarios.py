"""The simulated payments world: vocabularies, the population's mix, the legitimate traffic,
the true fraud model and the compromise episodes, and the named scenarios that change one
of them from a given day on.

Plain frozen data, so the whole ground truth reads in one screen; the generator
(`usecases.fraud.generator`) turns it into arrays and draws nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from kubeloop.scenario import Scenario as BaseScenario
from kubeloop.scenario import frozen as _frozen

# Vocabularies: their order is the integer code inside the generator (append only).
COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "IN", "BR")
CATEGORIES: tuple[str, ...] = (
    "grocery",
    "fuel",
    "restaurant",
    "retail",
    "electronics",
    "travel",
    "digital_goods",
    "gambling",
)
CHANNELS: tuple[str, ...] = ("card_present", "card_not_present")
CARD_NOT_PRESENT = 1


@dataclass(frozen=True)
class PopulationMix:
    """How cards and merchants are drawn (once per seed)."""

    country_mix: Mapping[str, float] = field(
        default_factory=lambda: _frozen(
            {"US": 0.40, "GB": 0.12, "DE": 0.12, "FR": 0.10, "IN": 0.14, "BR": 0.12}
        )
    )
    category_mix: Mapping[str, float] = field(
        default_factory=lambda: _frozen(
            {"grocery": 0.22, "fuel": 0.12, "restaurant": 0.20, "retail": 0.20,
             "electronics": 0.08, "travel": 0.06, "digital_goods": 0.08, "gambling": 0.04}
        )
    )  # fmt: skip
    # A card's typical amount: lognormal around exp(mean) currency units.
    card_amount_log_mean: float = 3.4
    card_amount_log_sigma: float = 0.6
    card_activity_sigma: float = 1.0
    merchant_popularity_sigma: float = 1.2
    # Merchant risk: a latent logit effect per merchant on top of its category's.
    merchant_risk_std: float = 0.3
    # Share of a card's legitimate spend that is card-not-present: uniform in this range.
    card_cnp_share: tuple[float, float] = (0.05, 0.45)


@dataclass(frozen=True)
class Traffic:
    """Legitimate traffic of one day: which merchants are used, how, and where."""

    # Multiplies the popularity of every merchant of a category (unlisted keep 1).
    category_weight: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    # Added to every card's card-not-present share.
    cnp_shift: float = 0.0
    # Share of a card's transactions abroad (at a merchant of another country).
    abroad_share: float = 0.05
    hourly_traffic: tuple[float, ...] = (
        0.20, 0.12, 0.08, 0.07, 0.08, 0.15, 0.35, 0.60, 0.85, 0.95, 1.00, 1.05,
        1.20, 1.10, 1.00, 1.00, 1.05, 1.15, 1.25, 1.20, 1.05, 0.85, 0.60, 0.35,
    )  # fmt: skip


@dataclass(frozen=True)
class FraudModel:
    """The true fraud probability of a transaction, a logistic model whose logit is

    - `intercept`, plus the merchant's category risk and latent risk,
    - `cnp` for a card-not-present transaction, `abroad` outside the card's country,
    - `night` between 00:00 and 05:59,
    - `amount_slope * log(amount / card's typical amount)` (amount anomalies),
    - while the card is in a compromise episode, the episode style's `compromised` boost
      (see `Episodes`).
    """

    intercept: float = -7.0
    category_risk: Mapping[str, float] = field(
        default_factory=lambda: _frozen(
            {"grocery": -0.6, "fuel": -0.2, "restaurant": -0.5, "retail": 0.0,
             "electronics": 0.9, "travel": 0.6, "digital_goods": 1.1, "gambling": 1.3}
        )
    )  # fmt: skip
    cnp: float = 0.9
    abroad: float = 1.0
    night: float = 0.6
    amount_slope: float = 0.5


@dataclass(frozen=True)
class EpisodeStyle:
    """How a compromised card is used by the fraudster: where, how and how much."""

    category_weight: Mapping[str, float]
    cnp_share: float
    abroad_share: float
    # amount = card's typical amount * lognormal(amount_log_mean, amount_log_sigma)
    amount_log_mean: float
    amount_log_sigma: float = 0.5
    # Added to the fraud logit of the episode's transactions (they are the fraudster's).
    compromised: float = 6.0


@dataclass(frozen=True)
class Episodes:
    """Compromised cards: bursts of fraudulent use.

    Each day `rate` x cards episodes start at uniform times; an episode lasts
    `min_hours`..`max_hours` and holds 2 + Poisson(`mean_extra_txns`) transactions,
    at merchants drawn by popularity x `exp(risk_affinity * risk)` x the style's category
    weight. `styles` are (share, style) pairs."""

    rate: float = 0.0016
    min_hours: float = 1.0
    max_hours: float = 30.0
    mean_extra_txns: float = 6.0
    risk_affinity: float = 1.5
    styles: tuple[tuple[float, EpisodeStyle], ...] = ()


ONLINE_SPREE = EpisodeStyle(
    category_weight=_frozen(
        {"electronics": 4.0, "digital_goods": 4.0, "gambling": 3.0, "travel": 2.0, "retail": 1.0}
    ),
    cnp_share=0.9,
    abroad_share=0.5,
    amount_log_mean=1.3,
)
# The new pattern of `new_fraud_pattern`: cloned cards used in person, at home, for small
# everyday amounts: every observable the baseline fraud shows is absent but the burst.
CLONED_CARD = EpisodeStyle(
    category_weight=_frozen({"grocery": 3.0, "fuel": 3.0, "restaurant": 2.0}),
    cnp_share=0.05,
    abroad_share=0.0,
    amount_log_mean=-0.2,
    amount_log_sigma=0.4,
    # Everyday merchants, in person, small amounts: a low baseline logit, so the boost is
    # larger for these transactions to be the fraudster's as surely as a spree's.
    compromised=8.5,
)

BASELINE_EPISODES = Episodes(styles=((1.0, ONLINE_SPREE),))
BASELINE_FRAUD_MODEL = FraudModel()
BASELINE_POPULATION = PopulationMix()
BASELINE_TRAFFIC = Traffic()


@dataclass(frozen=True)
class Scenario(BaseScenario):
    """The world of each day: the baseline before `change_day`, the `changed_*` after."""

    changed_traffic: Traffic | None = None
    changed_episodes: Episodes | None = None

    def traffic_on(self, day_index: int, change_day: int) -> Traffic:
        """Legitimate traffic of day `day_index`."""
        return self.on_day(day_index, change_day, self.changed_traffic, BASELINE_TRAFFIC)

    def episodes_on(self, day_index: int, change_day: int) -> Episodes:
        """Compromise episodes of day `day_index`."""
        return self.on_day(day_index, change_day, self.changed_episodes, BASELINE_EPISODES)


SCENARIOS: Mapping[str, Scenario] = _frozen(
    {
        "baseline": Scenario("baseline", "the same world every day"),
        # Concept drift: from the change day half the episodes are cloned cards, whose
        # transactions look like everyday spend; P(fraud | inputs) changes.
        "new_fraud_pattern": Scenario(
            "new_fraud_pattern",
            "a new fraud pattern (cloned cards used in person for small amounts)",
            changed_episodes=replace(
                BASELINE_EPISODES,
                rate=BASELINE_EPISODES.rate * 1.5,
                styles=((0.4, ONLINE_SPREE), (0.6, CLONED_CARD)),
            ),
        ),
        # Covariate shift: online categories take a larger share of spend, more of it card
        # not present; the fraud model itself is unchanged.
        "merchant_mix_shift": Scenario(
            "merchant_mix_shift",
            "spend moves to online merchants (digital goods, electronics, travel)",
            changed_traffic=replace(
                BASELINE_TRAFFIC,
                category_weight=_frozen(
                    {
                        "digital_goods": 3.0,
                        "electronics": 2.0,
                        "travel": 2.0,
                        "grocery": 0.5,
                        "fuel": 0.5,
                    }
                ),
                cnp_shift=0.2,
            ),
        ),
    }
)

# Chargeback delay (days after the transaction): 1 + lognormal, so none comes within a day.
CHARGEBACK_DELAY_LOG_MEAN = 1.1  # median 1 + 3 days
CHARGEBACK_DELAY_LOG_SIGMA = 0.5
