"""The stream's best-of policy: candidates trained in parallel on Ray actors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.cluster.executor import RayExecutor
from continual_trainer.data.storage import Store
from continual_trainer.stream import Policy, run_stream
from tests.conftest import make_table


@pytest.mark.slow
@pytest.mark.ray
def test_best_policy_trains_candidates_on_actors(ray_cluster, tiny_store: str, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(seed=40, shift=0.5), inbox / "n.parquet")
    policy = Policy("best", ["finetune_new", "fresh_all", "ensemble_all"], values={"epochs": "3"})
    (event,) = run_stream(tiny_store, str(inbox), policy, RayExecutor(), once=True)
    assert event.strategy in ("finetune_new", "fresh_all", "ensemble_all") and event.version
    record = json.loads(Path(tiny_store, "stream", "processed", f"{event.sha256}.json").read_text())
    assert record["version"] == event.version
    assert os.path.isdir(Path(tiny_store, "models", event.version))
    assert Store.open(tiny_store).stream_marker(event.sha256)["version"] == event.version
    # Above the memory budget the candidates' actors read the store themselves.
    pq.write_table(make_table(seed=41, shift=0.6), inbox / "o.parquet")
    pieces = Policy("best", ["finetune_all", "ensemble_all"], values={"epochs": "3"}, memory_budget=1000)
    (event,) = run_stream(tiny_store, str(inbox), pieces, RayExecutor(), once=True)
    assert event.status in ("updated", "kept") and len(event.candidates) == 2
    assert all("accuracy" in c["holdout"] for c in event.candidates)


@pytest.mark.slow
@pytest.mark.ray
def test_a_stream_starts_ray_only_when_a_file_needs_it(ray_cluster, tiny_store: str, tmp_path: Path, capsys) -> None:
    from continual_trainer.cli import main

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    argv = ["stream", "--store", tiny_store, "--inbox", str(inbox), "--once", "--policy", "best", "--json", "--ray"]
    argv += ["--candidates", "finetune_new,fresh_all", "--set", "epochs=2"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["executor"] == "a local Ray (started when a file needs it)"
    pq.write_table(make_table(seed=41, shift=0.5), inbox / "n.parquet")
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["executor"].startswith(("a local Ray started here", "the Ray cluster at")) and len(out["events"]) == 1
