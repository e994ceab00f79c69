"""One rule for where work runs, for every command: this process unless a cluster is
configured (RAY_ADDRESS, --address) or asked for (--ray, --actors); Ray is never started for
work that needs none."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from continual_trainer.executor import EXECUTORS
from tests.conftest import make_table

HERE = "this process (no Ray)"


class RayAsked(Exception):
    """Raised instead of starting Ray."""


@pytest.fixture
def no_ray(monkeypatch):
    """The `ray` executor replaced by one that fails the command when made: nothing may start Ray."""
    monkeypatch.setenv("RAY_ADDRESS", "")  # recorded, so the test's own changes are undone after it
    monkeypatch.delenv("RAY_ADDRESS")
    made: list[int] = []

    def refuse(actors: int):
        made.append(actors)
        raise RayAsked("Ray was asked for")

    real = EXECUTORS.get("ray")
    EXECUTORS.remove("ray")
    EXECUTORS.add("ray", refuse)
    yield made
    EXECUTORS.remove("ray")
    EXECUTORS.add("ray", real)


def _json(capsys, *argv: str) -> dict:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_command_runs_here_unless_a_cluster_is_configured_or_asked_for(
    tmp_path: Path, capsys, no_ray: list[int], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, table in {"old": make_table(seed=0), "new": make_table(seed=1, shift=0.3)}.items():
        pq.write_table(table, f"{name}.parquet")
    pq.write_table(make_table(seed=2).drop_columns(["y"]), "score.parquet")
    Path("sweep.yaml").write_text("strategies: [keep, finetune_new]\nparams: {epochs: 2}\n")
    Path("inbox").mkdir()
    pq.write_table(make_table(seed=3, shift=0.3), "inbox/day1.parquet")
    assert main(["init", "--store", "s", "--data", "old.parquet", "--label", "y", "--epochs", "3", "--quiet"]) == 0
    assert main(["ingest", "--store", "s", "new.parquet", "--quiet"]) == 0
    capsys.readouterr()
    runs = {
        "update": ["update", "--store", "s", "--strategy", "finetune_new", "--set", "epochs=2", "--promote", "never"],
        "predict": ["predict", "--store", "s", "--data", "score.parquet", "--out", "p.parquet"],
        "sweep": ["sweep", "--store", "s", "--config", "sweep.yaml"],
        "stream": ["stream", "--store", "s", "--inbox", "inbox", "--once", "--policy", "best", "--set", "epochs=2"],
        "demo": ["demo", "--store", "d"],
    }
    where = {command: _json(capsys, *argv)["executor"] for command, argv in runs.items()}
    assert where == dict.fromkeys(runs, HERE) and no_ray == []
    # Asked for: --ray, --address, --actors, RAY_ADDRESS (each refused here, proving it was asked).
    for argv in (
        [*runs["update"], "--ray"],
        [*runs["predict"], "--actors", "2"],
        [*runs["demo"][:1], "--store", "d2", "--address", "127.0.0.1:1"],
        runs["update"],  # with RAY_ADDRESS, below
    ):
        if argv is runs["update"]:
            monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
        assert main(argv) == 1
        assert "Ray was asked for" in capsys.readouterr().err
        if "--address" in argv:  # for that command only: the process's environment is as it was
            assert "RAY_ADDRESS" not in os.environ
    assert len(no_ray) == 4
    pq.write_table(make_table(seed=5, shift=0.3), "more.parquet")
    assert main(["ingest", "--store", "s", "more.parquet", "--quiet"]) == 0
    assert _json(capsys, *runs["update"], "--local")["executor"] == HERE  # --local wins over RAY_ADDRESS


def test_work_that_needs_no_ray_starts_none(tmp_path: Path, capsys, no_ray: list[int], monkeypatch) -> None:
    """With --ray: resuming a finished sweep to keep its winner, and a stream file whose trigger
    stays quiet, never start Ray."""
    monkeypatch.chdir(tmp_path)
    pq.write_table(make_table(seed=0), "old.parquet")
    pq.write_table(make_table(seed=1), "new.parquet")
    Path("sweep.yaml").write_text("strategies: [keep, finetune_new]\nparams: {epochs: 2}\n")
    assert main(["init", "--store", "s", "--data", "old.parquet", "--label", "y", "--epochs", "30", "--quiet"]) == 0
    assert main(["ingest", "--store", "s", "new.parquet", "--quiet"]) == 0
    capsys.readouterr()
    sweep = _json(capsys, "sweep", "--store", "s", "--config", "sweep.yaml", "--local")
    resumed = _json(capsys, "sweep", "--store", "s", "--resume", sweep["sweep"], "--ray", "--promote", "best")
    assert resumed["finished"] == 2 and no_ray == []
    Path("inbox").mkdir()
    pq.write_table(make_table(seed=4), "inbox/same.parquet")  # the data the model knows: nothing to do
    stream = ["stream", "--store", "s", "--inbox", "inbox", "--once", "--policy", "finetune_new", "--ray"]
    (event,) = _json(capsys, *stream, "--trigger", "performance")["events"]
    assert event["status"] == "ingested" and event["candidates"] == [] and no_ray == [], event  # quiet: no update
