"""Sweeps: the grid, outputs, resume, and trials whose worker dies."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import strategies
from cluster.sweep import SweepSpec, run_sweep
from data.errors import UserError
from data.storage import Store
from strategies.base import TrainParams, UpdateInputs
from strategies.retrain import fresh
from trainer.candidate import Candidate

SPEC = """
strategies:
  - keep
  - finetune_all:
      weighting: [none, recency]
params: {epochs: 3}
seeds: [0, 1]
"""


def test_spec_expands_the_grid_and_validates_early() -> None:
    spec = SweepSpec.parse(SPEC)
    assert len(spec.trials) == 2 + 2 * 2
    assert {t.strategy for t in spec.trials} == {"keep", "finetune_all"}
    keep = [t for t in spec.trials if t.strategy == "keep"]
    assert all(t.params == {} for t in keep)  # shared params apply only where they exist
    assert len({t.trial_id for t in spec.trials}) == len(spec.trials)
    for bad, message in [
        ("strategies: [retrain]", "unknown strategy"),
        ("strategies: [keep]\nparams: {epochs: 3}", "no listed strategy has parameter(s) epochs"),
        ("strategies: [{fresh_new: {epochs: [0]}}]", "epochs must be >= 1"),
        ("strategies: [keep]\nseeds: x", "`seeds` must be"),
        ("strategies: [keep]\ncolour: blue", "unknown key(s) colour"),
        ("strategies: [keep", "not valid YAML"),
    ]:
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            SweepSpec.parse(bad)


def test_example_sweep_file_parses() -> None:
    path = Path(__file__).parents[2] / "examples" / "sweep.yaml"
    assert len(SweepSpec.parse(path.read_text()).trials) == 8 * 3


@pytest.mark.ray
def test_sweep_writes_results_report_and_plots(ray_cluster, tiny_store: str) -> None:
    store = Store.open(tiny_store)
    result = run_sweep(store, SweepSpec.parse(SPEC), progress=False)
    assert result.finished == result.trials == 6
    table = pq.read_table(os.path.join(result.folder, "results.parquet"))
    assert table.num_rows == 6 and len(set(table.column("trial_id").to_pylist())) == 6
    assert {"holdout_accuracy", "old_accuracy", "new_accuracy", "train_seconds", "seed", "params"} <= set(
        table.column_names
    )
    report = Path(result.folder, "report.md").read_text()
    assert "| 1 |" in report and "finetune_all" in report and "±" in report
    for png in ("accuracy_by_strategy.png", "accuracy_vs_seconds.png"):
        assert Path(result.folder, "plots", png).read_bytes()[:4] == b"\x89PNG"

    # Resume: finished trials are not redone; a lost one is.
    trials = Path(result.folder, "trials")
    kept = {p.name: p.read_bytes() for p in trials.iterdir()}
    lost = sorted(kept)[0]
    (trials / lost).unlink()
    again = run_sweep(store, resume=result.sweep_id, progress=False)
    assert again.finished == 6
    for name, body in kept.items():
        if name != lost:
            assert (trials / name).read_bytes() == body
    assert (trials / lost).exists()


@dataclass(frozen=True)
class CrashParams(TrainParams):
    markers: str = ""


def crash_once(inputs: UpdateInputs, params: CrashParams) -> Candidate:
    """A strategy whose worker dies the first time each trial runs it."""
    marker = Path(params.markers) / f"seed-{inputs.seed}"
    if not marker.exists():
        marker.write_text("died once")
        os._exit(1)
    return fresh(inputs, params)


@pytest.mark.ray
def test_a_trial_whose_worker_dies_is_retried_and_recorded_once(ray_cluster, tiny_store: str, tmp_path) -> None:
    if "crash_once" not in strategies.names():
        strategies.register("crash_once", CrashParams, "test: os._exit on the first attempt")(crash_once)
    markers = tmp_path / "markers"
    markers.mkdir()
    spec = SweepSpec.parse(
        f"strategies: [crash_once, keep]\nparams: {{epochs: 2, markers: '{markers}'}}\nseeds: [0, 1]\nmax_failures: 2"
    )
    result = run_sweep(Store.open(tiny_store), spec, progress=False)
    ids = pq.read_table(os.path.join(result.folder, "results.parquet")).column("trial_id").to_pylist()
    assert sorted(ids) == sorted(t.trial_id for t in spec.trials)
    assert sorted(p.name for p in markers.iterdir()) == ["seed-0", "seed-1"]
    records = [json.loads(p.read_text()) for p in Path(result.folder, "trials").iterdir()]
    assert all(r["holdout_accuracy"] is not None for r in records)
