"""The simulated world: vocabularies, the traffic mix, the true click model, and the named
scenarios that change one of them from a given day on.

Everything here is plain, frozen data so a reader can see the whole ground truth in one
screen. The generator (`usecases.ctr.generator`) turns it into numpy arrays; nothing in
this module draws random numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from kubeloop.scenario import Scenario as BaseScenario
from kubeloop.scenario import frozen as _frozen

# Vocabularies. Their order is the integer code used inside the generator, so appending is
# safe but reordering changes every generated lake.
SEGMENTS: tuple[str, ...] = (
    "student",
    "young_professional",
    "parent",
    "retiree",
    "gamer",
    "traveler",
)
COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "IN", "BR")
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
CATEGORIES: tuple[str, ...] = (
    "retail",
    "travel",
    "finance",
    "gaming",
    "auto",
    "food",
    "tech",
    "health",
)
SLOTS: tuple[int, ...] = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class PopulationMix:
    """How the static user and ad attributes are distributed (drawn once per seed)."""

    segment_mix: Mapping[str, float]
    country_mix: Mapping[str, float]
    device_pref_mix: Mapping[str, float]
    # Lognormal sigmas of per-user activity and per-ad popularity: some users and ads
    # are heavy, which is what makes historical-CTR features informative.
    user_activity_sigma: float = 1.0
    ad_popularity_sigma: float = 1.0
    # Latent (unobservable) random effects, in logit units.
    user_latent_std: float = 0.3
    advertiser_latent_std: float = 0.15
    ad_latent_std: float = 0.25
    # Every ad replaces its creative on this cycle, with a random phase: creative ages stay
    # uniform on [0, cycle) day after day, so the baseline has no drift in that input.
    creative_refresh_days: float = 90.0


@dataclass(frozen=True)
class Traffic:
    """The input distribution of one day: who is active, on which device, which ads run.

    `preferred_device_share` of impressions come from the user's preferred device; the
    rest are drawn from `device_mix`. `country_activity` multiplies the activity weight of
    every user of a country (countries not listed keep weight 1). `new_ads_share` of
    impressions go to the new-ads wave (0 outside the `new_ads` scenario).
    """

    preferred_device_share: float
    device_mix: Mapping[str, float]
    country_activity: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    slot_mix: Mapping[int, float] = field(
        default_factory=lambda: _frozen({1: 0.30, 2: 0.25, 3: 0.20, 4: 0.15, 5: 0.10})
    )
    # Relative traffic per hour of day (UTC), low at night and peaking in the evening.
    hourly_traffic: tuple[float, ...] = (
        0.35, 0.25, 0.20, 0.18, 0.20, 0.30, 0.50, 0.75, 0.90, 0.95, 1.00, 1.05,
        1.10, 1.05, 1.00, 1.00, 1.05, 1.15, 1.30, 1.45, 1.55, 1.50, 1.10, 0.65,
    )  # fmt: skip
    new_ads_share: float = 0.0


@dataclass(frozen=True)
class ClickModel:
    """The true click probability: a logistic model whose logit is the sum of

    - `intercept` (sets the base CTR, ~5% on the baseline traffic),
    - main effects of `segment`, `category`, `country` and `device`,
    - `affinity`: the segment x category interaction (pairs not listed are 0),
    - position bias, steeper on small screens: `-position_slope[device] * (slot - 1)`,
    - `preferred_device_bonus` when the impression is on the user's preferred device,
    - daily seasonality `hour_amplitude * cos(2 pi (hour - hour_peak) / 24)`,
    - `weekend` on Saturday and Sunday,
    - creative fatigue `-fatigue * (1 - exp(-age_days / fatigue_days))`,
    - the user's and the ad's latent random effects (see `PopulationMix`).
    """

    intercept: float
    segment: Mapping[str, float]
    category: Mapping[str, float]
    country: Mapping[str, float]
    device: Mapping[str, float]
    affinity: Mapping[tuple[str, str], float]
    position_slope: Mapping[str, float]
    preferred_device_bonus: float = 0.3
    hour_amplitude: float = 0.3
    hour_peak: float = 21.0
    weekend: float = 0.10
    fatigue: float = 0.6
    fatigue_days: float = 30.0


BASELINE_POPULATION = PopulationMix(
    segment_mix=_frozen(
        {"student": 0.2, "young_professional": 0.2, "parent": 0.15, "retiree": 0.15,
         "gamer": 0.15, "traveler": 0.15}
    ),
    country_mix=_frozen({"US": 0.35, "GB": 0.12, "DE": 0.12, "FR": 0.10, "IN": 0.18, "BR": 0.13}),
    device_pref_mix=_frozen({"mobile": 0.55, "desktop": 0.35, "tablet": 0.10}),
)  # fmt: skip

BASELINE_TRAFFIC = Traffic(
    preferred_device_share=0.75,
    device_mix=_frozen({"mobile": 0.55, "desktop": 0.35, "tablet": 0.10}),
)

BASELINE_CLICK_MODEL = ClickModel(
    intercept=-2.5,
    segment=_frozen(
        {"student": 0.15, "young_professional": 0.0, "parent": -0.1, "retiree": -0.3,
         "gamer": 0.2, "traveler": 0.05}
    ),
    category=_frozen(
        {"retail": 0.1, "travel": -0.1, "finance": -0.4, "gaming": 0.0, "auto": -0.2,
         "food": 0.2, "tech": 0.0, "health": -0.15}
    ),
    country=_frozen({"US": 0.0, "GB": 0.05, "DE": -0.1, "FR": -0.05, "IN": -0.25, "BR": 0.1}),
    device=_frozen({"mobile": -0.1, "desktop": 0.0, "tablet": 0.05}),
    # Each segment has a couple of categories it clearly prefers and one it avoids: the
    # main learnable signal of the dataset.
    affinity=_frozen(
        {
            ("student", "gaming"): 1.2, ("student", "tech"): 0.75, ("student", "finance"): -0.9,
            ("young_professional", "finance"): 1.05, ("young_professional", "travel"): 0.75,
            ("young_professional", "gaming"): -0.45,
            ("parent", "food"): 0.9, ("parent", "health"): 0.9, ("parent", "retail"): 0.6,
            ("parent", "gaming"): -0.6,
            ("retiree", "health"): 1.35, ("retiree", "travel"): 0.75, ("retiree", "tech"): -0.75,
            ("gamer", "gaming"): 1.65, ("gamer", "tech"): 0.9, ("gamer", "health"): -0.75,
            ("traveler", "travel"): 1.5, ("traveler", "food"): 0.45, ("traveler", "auto"): -0.6,
        }
    ),
    position_slope=_frozen({"mobile": 0.7, "desktop": 0.4, "tablet": 0.5}),
)  # fmt: skip


@dataclass(frozen=True)
class Scenario(BaseScenario):
    """A named change of the world, applied to every day from `change_day` on.

    `traffic` and `click_model` are what those days use; the days before `change_day`
    always use the baseline ones, so they are the same data as a baseline run.
    """

    traffic: Traffic = BASELINE_TRAFFIC
    click_model: ClickModel = BASELINE_CLICK_MODEL

    def traffic_on(self, day_index: int, change_day: int) -> Traffic:
        """The traffic mix in effect on day `day_index` (0-based)."""
        return self.on_day(day_index, change_day, self.traffic, BASELINE_TRAFFIC)

    def click_model_on(self, day_index: int, change_day: int) -> ClickModel:
        """The true click model in effect on day `day_index` (0-based)."""
        return self.on_day(day_index, change_day, self.click_model, BASELINE_CLICK_MODEL)


BASELINE = Scenario(name="baseline", description="Nothing changes.")

COVARIATE_SHIFT = Scenario(
    name="covariate_shift",
    description=(
        "Traffic moves to mobile (fewer impressions on the preferred device, mobile-heavy "
        "mix) and Indian users become 6x as active; P(click | features) is unchanged."
    ),
    traffic=replace(
        BASELINE_TRAFFIC,
        preferred_device_share=0.45,
        device_mix=_frozen({"mobile": 0.85, "desktop": 0.10, "tablet": 0.05}),
        country_activity=_frozen({"IN": 6.0}),
    ),
)

CONCEPT_DRIFT = Scenario(
    name="concept_drift",
    description=(
        "Click behaviour changes: segment x category affinities are reshuffled and the "
        "position bias gets steeper; every input column stays identical to baseline."
    ),
    click_model=replace(
        BASELINE_CLICK_MODEL,
        affinity=_frozen(
            {
                ("student", "finance"): 0.9, ("student", "travel"): 0.75, ("student", "gaming"): -0.45,
                ("young_professional", "auto"): 1.05, ("young_professional", "health"): 0.75,
                ("young_professional", "finance"): -0.6,
                ("parent", "travel"): 0.9, ("parent", "tech"): 0.75, ("parent", "food"): -0.45,
                ("retiree", "food"): 1.2, ("retiree", "retail"): 0.75, ("retiree", "health"): -0.45,
                ("gamer", "auto"): 1.2, ("gamer", "food"): 0.75, ("gamer", "gaming"): -0.3,
                ("traveler", "finance"): 1.2, ("traveler", "tech"): 0.6, ("traveler", "travel"): -0.45,
            }
        ),
        position_slope=_frozen({"mobile": 1.1, "desktop": 0.7, "tablet": 0.9}),
    ),
)  # fmt: skip

NEW_ADS = Scenario(
    name="new_ads",
    description=(
        "A wave of never-seen ads (ids above all existing ones, creative age 0 at launch) "
        "takes 40% of impressions; users and context are unchanged."
    ),
    traffic=replace(BASELINE_TRAFFIC, new_ads_share=0.40),
)

SCENARIOS: Mapping[str, Scenario] = _frozen(
    {s.name: s for s in (BASELINE, COVARIATE_SHIFT, CONCEPT_DRIFT, NEW_ADS)}
)
