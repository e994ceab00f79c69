"""Streaming: every inbox file handled exactly once, bad ones quarantined, the stream goes on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from continual_trainer.executor import LocalExecutor
from continual_trainer.records import history
from continual_trainer.stream import Policy, run_stream
from tests.conftest import make_table

LOCAL = LocalExecutor()


def _inbox(tmp_path: Path) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(seed=21, shift=0.2), inbox / "a.parquet")
    (inbox / "b.parquet").write_bytes(b"not parquet at all")
    pq.write_table(make_table(seed=22, shift=0.4), inbox / "c.parquet")
    (inbox / "notes.txt").write_text("ignored")
    return inbox


def test_stream_with_a_strategy_policy_processes_each_file_once(tiny_store: str, tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    policy = Policy("finetune_all", values={"epochs": "3"})
    lines: list[str] = []
    events = run_stream(tiny_store, str(inbox), policy, LOCAL, once=True, on_event=lambda e: lines.append(e.line()))
    assert [e.file for e in events] == ["a.parquet", "b.parquet", "c.parquet"]
    assert [e.status for e in events][1] == "rejected" and "not a Parquet file" in events[1].reason
    assert events[0].status in ("updated", "kept") and events[0].drift["accuracy"] is not None
    assert len(lines) == 3 and lines[1].startswith("b.parquet: rejected")
    store = Store.open(tiny_store)
    assert len(store.quarantined()) == 1
    assert [e["file"] for e in store.stream_events()] == ["a.parquet", "b.parquet", "c.parquet"]
    # A second pass finds nothing new: exactly once.
    assert run_stream(tiny_store, str(inbox), policy, LOCAL, once=True) == []
    versions_before = len(history(tiny_store))
    shutil.copy(inbox / "a.parquet", inbox / "a-again.parquet")  # same bytes under another name
    assert run_stream(tiny_store, str(inbox), policy, LOCAL, once=True) == []
    assert len(history(tiny_store)) == versions_before


def test_stream_restart_after_a_crash_before_the_marker(tiny_store: str, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(seed=30, shift=0.3), inbox / "x.parquet")
    policy = Policy("fresh_all", values={"epochs": "30"})  # beats the store's model: promoted
    (first,) = run_stream(tiny_store, str(inbox), policy, LOCAL, once=True)
    assert first.promoted, first
    marker = Path(tiny_store, "stream", "processed", f"{first.sha256}.json")
    # Simulate a crash after the update was promoted but before the marker was written.
    marker.unlink()
    versions = len(history(tiny_store))
    (again,) = run_stream(tiny_store, str(inbox), policy, LOCAL, once=True)
    assert again.status == "seen" and len(history(tiny_store)) == versions
    assert marker.exists()


def test_stream_policy_errors_are_user_errors(tiny_store: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown strategy"):
        Policy("magic")
    with pytest.raises(UserError, match="cannot list"):
        run_stream(tiny_store, str(tmp_path / "missing-inbox"), Policy("keep"), LOCAL, once=True)
    with pytest.raises(UserError, match="no strategy of the policy has this parameter"):
        Policy("best", ["keep", "fresh_all"], values={"freeze": "1"})
