"""The awaiting-labels table of the drift state: a request id seen again replaces its
prediction and becomes the newest, eviction drops the oldest, and a state file of the
previous format (with a seq column) is migrated in age order."""

from __future__ import annotations

import sqlite3

from kubeloop.drift.state import FORMAT_VERSION, STATE_FILE, StateStore

KEY = ("m", "v1", "primary")


def test_a_repeated_id_replaces_its_prediction_and_becomes_the_newest(tmp_path):
    store = StateStore(tmp_path)
    with store.transaction():
        assert store.put_awaiting(KEY, [("a", 1.0, 0.1), ("b", 2.0, 0.2)], 10) == 0
    with store.transaction():
        # "a" again (in a later batch, and twice in this one): one row, the last value.
        assert store.put_awaiting(KEY, [("a", 3.0, 0.3), ("c", 4.0, 0.4), ("a", 5.0, 0.5)], 10) == 0
    assert store.awaiting_count() == 3
    with store.transaction():
        # Over the cap of 3: the oldest, "b", goes (not "a", replaced after it).
        assert store.put_awaiting(KEY, [("d", 6.0, 0.6)], 3) == 1
    assert store.awaiting_count() == 3
    popped = {r[0]: r for r in store.pop_awaiting(["a", "b", "c", "d"])}
    assert sorted(popped) == ["a", "c", "d"]
    assert popped["a"] == ("a", KEY, 5.0, 0.5)
    assert store.awaiting_count() == 0
    store.close()


def test_a_rolled_back_batch_leaves_no_awaiting_row(tmp_path):
    store = StateStore(tmp_path)
    with store.transaction():
        store.put_awaiting(KEY, [("a", 1.0, 0.1)], 10)
    try:
        with store.transaction():
            store.put_awaiting(KEY, [("a", 2.0, 0.2), ("b", 3.0, 0.3)], 10)
            raise RuntimeError("the batch fails after its rows went in")
    except RuntimeError:
        pass
    assert store.awaiting_count() == 1
    assert store.pop_awaiting(["a", "b"]) == [("a", KEY, 1.0, 0.1)]
    store.close()


def test_a_format_1_state_file_is_migrated_in_age_order(tmp_path):
    conn = sqlite3.connect(tmp_path / STATE_FILE)
    conn.executescript(
        """
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('format', '1');
        CREATE TABLE awaiting (
            id TEXT PRIMARY KEY, key TEXT NOT NULL, t REAL NOT NULL,
            prediction REAL NOT NULL, seq INTEGER NOT NULL);
        CREATE INDEX awaiting_seq ON awaiting (seq);
        INSERT INTO awaiting VALUES ('late', '["m", "v1", "primary"]', 9.0, 0.9, 7);
        INSERT INTO awaiting VALUES ('early', '["m", "v1", "primary"]', 1.0, 0.1, 2);
        """
    )
    conn.commit()
    conn.close()
    store = StateStore(tmp_path)
    assert store.get_meta("format") == str(FORMAT_VERSION)
    assert store.awaiting_count() == 2
    with store.transaction():
        # The cap evicts by age: "early" (seq 2) before "late" (seq 7).
        assert store.put_awaiting(KEY, [("new", 10.0, 0.5)], 2) == 1
    assert sorted(r[0] for r in store.pop_awaiting(["early", "late", "new"])) == ["late", "new"]
    store.close()
    # Reopened: format 2 already, nothing to migrate again.
    assert StateStore(tmp_path).get_meta("format") == str(FORMAT_VERSION)
