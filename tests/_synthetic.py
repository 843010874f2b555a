"""A small training-set builder with a known logistic click probability.

It produces exactly `schema.TRAINING_COLUMNS` (event log + point-in-time features), with
cold-start entities whose history features are missing and a few missing categories, so
trainers, transform and evaluation can be tested before the real generator and Feast
join exist. The click probability depends on observable features (context, categories,
history rates) and on latent user/ad effects that the history features only estimate,
so the oracle is strictly better than any model, as with the real data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from usecases.ctr import schema

DEVICES = ["mobile", "desktop", "tablet"]
COUNTRIES = ["US", "DE", "FR", "IN", "BR"]
SEGMENTS = ["sports", "tech", "fashion", "travel"]
CATEGORIES = ["sports", "tech", "fashion", "travel", "food"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def make_training_frame(
    n: int = 20_000,
    *,
    seed: int = 0,
    days: int = 7,
    n_users: int = 1500,
    n_ads: int = 200,
    start: str = "2024-03-01",
) -> pd.DataFrame:
    """Return `n` impressions over `days` days with columns `schema.TRAINING_COLUMNS`."""
    rng = np.random.default_rng(seed)
    user_effect = rng.normal(0.0, 0.2, n_users)
    user_segment = rng.choice(SEGMENTS, n_users)
    user_country = rng.choice(COUNTRIES, n_users)
    user_pref = rng.choice(DEVICES, n_users)
    ad_effect = rng.normal(0.0, 0.4, n_ads)
    ad_category = rng.choice(CATEGORIES, n_ads)
    ad_advertiser = rng.integers(1, 30, n_ads)
    ad_age = rng.uniform(0, 60, n_ads)

    offsets = np.sort(rng.uniform(0, days * 86400.0, n))
    ts = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(offsets, unit="s")
    # Ads launch over time: an impression picks among ads live at its time, so the last
    # days contain ads never seen before (the "new ad" slice).
    live = np.maximum(20, (n_ads * (0.6 + 0.4 * offsets / (days * 86400.0))).astype(int))
    ad = (rng.random(n) * live).astype(int)
    user = rng.integers(0, n_users, n)
    device = np.where(rng.random(n) < 0.7, user_pref[user], rng.choice(DEVICES, n))
    hour = ts.hour.to_numpy().astype(np.int64)
    weekday = ts.weekday.to_numpy().astype(np.int64)
    slot = rng.integers(1, 6, n)

    logit = (
        -2.0
        + user_effect[user]
        + ad_effect[ad]
        + 0.8 * (user_segment[user] == ad_category[ad])
        - 0.35 * (slot - 1)
        + np.select([device == "mobile", device == "desktop"], [0.4, -0.3], -0.6)
        + 0.35 * np.sin(2 * np.pi * hour / 24.0)
        - 0.01 * ad_age[ad]
    )
    true_ctr = _sigmoid(logit)
    click = (rng.random(n) < true_ctr).astype(np.int64)

    def history(effect: np.ndarray, rate: float, base: float) -> dict[str, np.ndarray]:
        # Rolling counts, simulated per row: the rate of an entity is a noisy estimate
        # of its latent effect, and no impressions means the feature rows are missing.
        imp7 = rng.poisson(rate, n).astype(float)
        clk7 = rng.binomial(imp7.astype(int), _sigmoid(base + effect)).astype(float)
        imp1 = rng.binomial(imp7.astype(int), 1 / 7).astype(float)
        clk1 = rng.binomial(clk7.astype(int), 1 / 7).astype(float)
        hours = rng.exponential(24 * 7 / np.maximum(imp7, 1))
        cold = imp7 == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            ctr7 = np.where(cold, np.nan, clk7 / imp7)
            ctr1 = np.where(imp1 == 0, np.nan, clk1 / np.maximum(imp1, 1))
        for arr in (imp7, clk7, imp1, clk1, hours):
            arr[cold] = np.nan
        return {
            "imp1": imp1,
            "clk1": clk1,
            "ctr1": ctr1,
            "imp7": imp7,
            "clk7": clk7,
            "ctr7": ctr7,
            "hours": hours,
            "cold": cold,
        }

    u = history(user_effect[user], 3.0, -2.2)
    a = history(ad_effect[ad], 200.0, -2.2)

    def cat(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        out = values.astype(object)
        out[missing] = None
        return out

    frame = pd.DataFrame(
        {
            "event_id": np.arange(n, dtype=np.int64),
            "event_timestamp": ts,
            "user_id": user.astype(np.int64),
            "ad_id": ad.astype(np.int64),
            "hour": hour,
            "weekday": weekday,
            "slot_position": slot.astype(np.int64),
            "device": cat(device, rng.random(n) < 0.01),
            "click": click,
            "true_ctr": true_ctr,
            # a cold-start user has no feature row at all: every user feature is missing
            "user_segment": cat(user_segment[user], u["cold"]),
            "user_country": cat(user_country[user], u["cold"]),
            "user_device_pref": cat(user_pref[user], u["cold"]),
            "user_impressions_1d": u["imp1"],
            "user_clicks_1d": u["clk1"],
            "user_ctr_1d": u["ctr1"],
            "user_impressions_7d": u["imp7"],
            "user_clicks_7d": u["clk7"],
            "user_ctr_7d": u["ctr7"],
            "user_hours_since_last": u["hours"],
            "advertiser_id": np.where(a["cold"], np.nan, ad_advertiser[ad].astype(float)),
            "ad_category": cat(ad_category[ad], a["cold"]),
            "ad_creative_age_days": np.where(a["cold"], np.nan, ad_age[ad]),
            "ad_impressions_1d": a["imp1"],
            "ad_clicks_1d": a["clk1"],
            "ad_ctr_1d": a["ctr1"],
            "ad_impressions_7d": a["imp7"],
            "ad_clicks_7d": a["clk7"],
            "ad_ctr_7d": a["ctr7"],
            "ad_hours_since_last": a["hours"],
        }
    )
    return frame[schema.TRAINING_COLUMNS]
