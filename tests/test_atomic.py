"""kubeloop.atomic: the one atomic-replace helper every rewritten file goes through."""

from __future__ import annotations

import stat

import pytest

from kubeloop.atomic import atomic_path, atomic_write_text


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomic_write_text(path, "one\n")
    atomic_write_text(path, "two\n")
    assert path.read_text() == "two\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_temporary_is_a_hidden_tmp_sibling(tmp_path):
    # The registry's recovery finds a killed writer's leftovers by `.*.tmp`.
    with atomic_path(tmp_path / "latest") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".latest.") and tmp.name.endswith(".tmp")
        tmp.write_text("v0001")
