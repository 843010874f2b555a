"""Rollout state: KServe canaryTrafficPercent semantics of the pure transitions, atomic
persistence, and the registry's stages kept in step by LocalRollout."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from kubeloop.registry import RegistryError, Stage, open_registry
from kubeloop.serving.rollout import (
    LocalRollout,
    RolloutError,
    RolloutState,
    initial_state,
    load_state,
    promote,
    rollback,
    rollout_path,
    save_state,
    set_canary,
    set_percent,
    set_sticky,
    sync_registry,
)


def test_transitions_follow_canary_traffic_percent_semantics() -> None:
    s0 = initial_state("ctr", "v0001")
    assert s0.split == {"primary": 100, "canary": 0} and s0.canary_version is None

    s1 = set_canary(s0, "v0002", 10)
    assert (s1.primary_version, s1.canary_version, s1.canary_percent) == ("v0001", "v0002", 10)

    pinned = set_percent(s1, 0)  # canary stays deployed, no traffic
    assert pinned.canary_version == "v0002" and pinned.split == {"primary": 100, "canary": 0}

    promoted = promote(set_percent(pinned, 50))
    assert (promoted.primary_version, promoted.canary_version) == ("v0002", None)
    assert promoted.canary_percent == 0

    rolled = rollback(s1)
    assert (rolled.primary_version, rolled.canary_version, rolled.canary_percent) == (
        "v0001",
        None,
        0,
    )
    # Replacing a canary keeps the primary.
    replaced = set_canary(s1, "v0003", 20)
    assert (replaced.primary_version, replaced.canary_version) == ("v0001", "v0003")

    # Every decision is recorded with its reason, oldest first; inputs are not mutated.
    assert [d.action for d in promoted.history] == [
        "init",
        "set_canary",
        "set_percent",
        "set_percent",
        "promote",
    ]
    assert "promoted v0002, replacing v0001" in promoted.history[-1].reason
    assert set_percent(s1, 30, reason="error rate ok").history[-1].reason == "error rate ok"
    assert s1.canary_percent == 10 and len(s1.history) == 2
    assert set_sticky(s1, True).sticky


@pytest.mark.parametrize(
    "change",
    [
        lambda s: set_percent(s, 101),
        lambda s: set_percent(s, -1),
        lambda s: set_percent(s, 12.5),
        lambda s: set_canary(s, "v0001", 10),  # the primary cannot be its own canary
        lambda s: promote(s),
        lambda s: rollback(s),
        lambda s: set_percent(s, 10),  # no canary to send traffic to
    ],
)
def test_invalid_changes_are_refused(change) -> None:
    with pytest.raises(RolloutError):
        change(initial_state("ctr", "v0001"))


def test_state_validation() -> None:
    with pytest.raises(ValueError):
        RolloutState(model_name="ctr", primary_version="v0001", canary_percent=10)
    with pytest.raises(RolloutError):
        initial_state("ctr", "v0001", None, 10)
    assert set_percent(initial_state("ctr", "v0001"), 0).history[-1].action == "init"


def test_save_is_atomic_and_round_trips(tmp_path: Path) -> None:
    path = rollout_path(tmp_path)
    assert path == tmp_path.resolve() / "serving" / "rollout.json"
    assert load_state(path) is None
    state = set_canary(initial_state("ctr", "v0001"), "v0002", 25)
    save_state(state, path)
    assert load_state(path) == state
    assert sorted(p.name for p in path.parent.iterdir()) == ["rollout.json"]  # no temp files
    path.write_text("{not json")
    with pytest.raises(RolloutError, match="not a valid rollout state"):
        load_state(path)


def test_concurrent_changes_do_not_lose_updates(tmp_path: Path) -> None:
    rollout = LocalRollout(tmp_path, "ctr")
    rollout.init("v0001", "v0002", 0)

    def work(offset: int) -> None:
        for i in range(15):
            LocalRollout(tmp_path, "ctr").set_percent((offset + i) % 100 + 1)

    threads = [threading.Thread(target=work, args=(k * 20,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(rollout.state().history) == 1 + 45


# --- the registry -------------------------------------------------------------------------


def _register(registry, n: int, *, failing: tuple[int, ...] = ()) -> None:
    model = Path(registry.root).parent / "model"
    model.mkdir(exist_ok=True)
    (model / "model.txt").write_text("tree")
    for i in range(1, n + 1):
        registry.register(
            "ctr",
            model,
            {
                "model_kind": "lightgbm",
                "gate": {"passed": i not in failing},
                "feature_service": "ctr_model",
                "features": ["hour"],
                "training_window": {"start": "2024-03-01", "end": "2024-03-02"},
                "data_scenario": "baseline",
                "code_version": "test",
            },
        )


def _stages(registry) -> dict[str, str]:
    return {v.version: v.stage.value for v in registry.list("ctr")}


def test_local_rollout_keeps_registry_stages_in_step(tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "registry")
    _register(registry, 4, failing=(4,))
    rollout = LocalRollout(tmp_path, "ctr", registry)

    rollout.init("v0001")
    assert _stages(registry) == {
        "v0001": "production",
        "v0002": "candidate",
        "v0003": "candidate",
        "v0004": "candidate",
    }
    rollout.set_canary("v0002", 10)
    assert _stages(registry)["v0002"] == "canary"
    rollout.set_canary("v0003", 20)  # replaces the canary: the old one is archived
    assert _stages(registry) == {
        "v0001": "production",
        "v0002": "archived",
        "v0003": "canary",
        "v0004": "candidate",
    }
    rollout.set_percent(0)  # pinned: stages unchanged
    assert _stages(registry)["v0003"] == "canary"

    state = rollout.promote()
    assert (state.primary_version, state.canary_version) == ("v0003", None)
    assert _stages(registry) == {
        "v0001": "archived",
        "v0002": "archived",
        "v0003": "production",
        "v0004": "candidate",
    }
    rollout.set_canary("v0002", 10)  # archived -> canary is allowed
    rollout.rollback()
    assert _stages(registry)["v0002"] == "archived"
    assert _stages(registry)["v0003"] == "production"

    # A version that failed its gate is refused, and the rollout stays as it was.
    before = rollout.state()
    with pytest.raises(RegistryError, match="did not pass its evaluation gate"):
        rollout.set_canary("v0004", 10)
    assert rollout.state() == before
    assert _stages(registry)["v0004"] == "candidate"
    forced = LocalRollout(tmp_path, "ctr", registry, force=True).set_canary("v0004", 5)
    assert forced.canary_version == "v0004" and _stages(registry)["v0004"] == Stage.CANARY

    data = json.loads(rollout.path.read_text())
    assert data["history"][-1]["action"] == "set_canary"
    # Syncing an unchanged state changes nothing.
    assert sync_registry(registry, rollout.state()) == []


def test_local_rollout_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RolloutError, match="kubeloop serve"):
        LocalRollout(tmp_path, "ctr").state()
    LocalRollout(tmp_path, "other").init("v0001")
    with pytest.raises(RolloutError, match="'other', not 'ctr'"):
        LocalRollout(tmp_path, "ctr").state()
