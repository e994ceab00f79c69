"""Streaming: every inbox file handled exactly once, bad ones quarantined, the stream goes on."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.stream import Policy, run_stream
from data.errors import UserError
from data.storage import Store
from tests.conftest import make_table
from trainer.pipeline import history


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
    policy = Policy("finetune_all")
    policy.jobs = [(s, s.make_params({"epochs": "3"})) for s, _ in policy.jobs]
    lines: list[str] = []
    events = run_stream(tiny_store, str(inbox), policy, once=True, on_event=lambda e: lines.append(e.line()))
    assert [e.file for e in events] == ["a.parquet", "b.parquet", "c.parquet"]
    assert [e.status for e in events][1] == "rejected" and "not a Parquet file" in events[1].reason
    assert events[0].status in ("updated", "kept") and events[0].drift["accuracy"] is not None
    assert len(lines) == 3 and lines[1].startswith("b.parquet: rejected")
    store = Store.open(tiny_store)
    assert len(store.list_dirs("quarantine")) == 1
    assert len(store.list_dirs("stream")) == 2  # events/ and processed/
    # A second pass finds nothing new: exactly once.
    assert run_stream(tiny_store, str(inbox), policy, once=True) == []
    versions_before = len(history(tiny_store))
    shutil.copy(inbox / "a.parquet", inbox / "a-again.parquet")  # same bytes under another name
    assert run_stream(tiny_store, str(inbox), policy, once=True) == []
    assert len(history(tiny_store)) == versions_before


def test_stream_restart_after_a_crash_before_the_marker(tiny_store: str, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(seed=30, shift=0.3), inbox / "x.parquet")
    policy = Policy("fresh_all")
    policy.jobs = [(s, s.make_params({"epochs": "3"})) for s, _ in policy.jobs]
    (first,) = run_stream(tiny_store, str(inbox), policy, once=True)
    store = Store.open(tiny_store)
    marker = Path(store.path("stream", "processed", f"{first.sha256}.json"))
    # Simulate a crash after the update was promoted but before the marker was written.
    marker.unlink()
    versions = len(history(tiny_store))
    (again,) = run_stream(tiny_store, str(inbox), policy, once=True)
    if first.promoted:
        assert again.status == "seen" and len(history(tiny_store)) == versions
    assert marker.exists()


def test_stream_policy_errors_are_user_errors(tiny_store: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown strategy"):
        Policy("magic")
    with pytest.raises(UserError, match="cannot list"):
        run_stream(tiny_store, str(tmp_path / "missing-inbox"), Policy("keep"), once=True)


@pytest.mark.ray
def test_best_policy_trains_candidates_on_actors(ray_cluster, tiny_store: str, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(seed=40, shift=0.5), inbox / "n.parquet")
    policy = Policy("best", ["finetune_new", "fresh_all", "ensemble_all"])
    policy.jobs = [(s, s.make_params({"epochs": "3"})) for s, _ in policy.jobs]
    (event,) = run_stream(tiny_store, str(inbox), policy, once=True)
    assert event.strategy in ("finetune_new", "fresh_all", "ensemble_all") and event.version
    record = json.loads(Path(Store.open(tiny_store).path("stream", "processed", f"{event.sha256}.json")).read_text())
    assert record["version"] == event.version
    assert os.path.isdir(Store.open(tiny_store).path("models", event.version))
