"""Sweeps on Ray Tune: outputs, retries of dead workers, users' mistakes found on workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer import strategies
from continual_trainer.cluster.executor import RayExecutor
from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from continual_trainer.strategies.base import TrainParams, UpdateInputs
from continual_trainer.strategies.retrain import fresh
from continual_trainer.sweep import SweepSpec, run_sweep
from continual_trainer.trainer.candidate import Candidate
from tests.continual_trainer.test_sweep import ASHA, SPEC, TPE


@pytest.mark.ray
def test_sweep_on_tune_writes_results(ray_cluster, tiny_store: str) -> None:
    store = Store.open(tiny_store)
    result = run_sweep(store, RayExecutor(), SweepSpec.parse(SPEC))
    assert result.finished == result.trials == 6
    table = pq.read_table(os.path.join(result.folder, "results.parquet"))
    assert table.num_rows == 6 and len(set(table.column("trial_id").to_pylist())) == 6
    assert (table.column("worker_peak_rss_mb").to_numpy() > 0).all()
    assert {"plots/accuracy_by_strategy.png", "results.parquet"} <= set(store.report_files(result.sweep_id))


@pytest.mark.ray
def test_asha_on_tune_stops_trials_early_through_the_drivers_rungs(ray_cluster, tiny_store: str) -> None:
    """Trials on Ray workers ask one scheduler actor at their rungs; those that cannot learn stop."""
    store = Store.open(tiny_store)
    result = run_sweep(store, RayExecutor(), SweepSpec.parse(ASHA))
    stopped = [r for r in store.trial_records(result.sweep_id).values() if "stopped_epochs" in r]
    assert {json.loads(r["params"])["learning_rate"] for r in stopped} >= {0.00001, 0.000003}
    assert result.stopped == len(stopped) and result.finished + result.stopped == 4
    assert [e for e, _ in json.loads(result.table.column("curve")[0].as_py())] == [2, 4, 6, 8]


@pytest.mark.ray
def test_a_tpe_search_runs_its_waves_on_tune(ray_cluster, tiny_store: str) -> None:
    """TPE proposes in the driver; each wave of trials (one configuration on its 2 seeds here)
    runs on Tune, and the second wave follows the first."""
    store = Store.open(tiny_store)
    spec = SweepSpec.parse(TPE.replace("num_samples: 3", "num_samples: 2") + "max_concurrent: 2\n")
    result = run_sweep(store, RayExecutor(), spec)
    assert result.finished == result.trials == 4 and "Ray" in result.where
    assert len({r["params"] for r in result.table.to_pylist()}) == 2


@pytest.mark.ray
def test_a_sweep_asking_for_gpus_the_cluster_lacks_is_refused_before_any_trial(ray_cluster, tiny_store: str) -> None:
    """Tune would leave such trials pending for ever; the local test cluster has no GPU."""
    store = Store.open(tiny_store)
    spec = SweepSpec.parse(SPEC + "gpus_per_trial: 1\n")
    refused = r"gpus_per_trial: 1 in the sweep file, but the Ray cluster has 0 GPUs \(set 0 to train on CPUs\)"
    with pytest.raises(UserError, match=refused):
        run_sweep(store, RayExecutor(), spec)


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


@pytest.fixture
def crash_strategy():
    """`crash_once`, registered for one test only (the demo runs every registered strategy)."""
    from continual_trainer.strategies import registry

    strategies.register("crash_once", CrashParams, "test: os._exit on the first attempt")(crash_once)
    yield "crash_once"
    registry._REGISTRY.remove("crash_once")


@pytest.mark.slow
@pytest.mark.ray
def test_a_trial_whose_worker_dies_is_retried_and_recorded_once(
    ray_cluster, tiny_store: str, tmp_path, crash_strategy
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    spec = SweepSpec.parse(
        f"strategies: [{crash_strategy}, keep]\nparams: {{epochs: 2, markers: '{markers}'}}\nseeds: [0, 1]\n"
        "max_failures: 2"
    )
    result = run_sweep(Store.open(tiny_store), RayExecutor(), spec)
    ids = pq.read_table(os.path.join(result.folder, "results.parquet")).column("trial_id").to_pylist()
    assert sorted(ids) == sorted(t.trial_id for t in spec.trials)
    assert sorted(p.name for p in markers.iterdir()) == ["seed-0", "seed-1"]
    records = [json.loads(p.read_text()) for p in Path(result.folder, "trials").iterdir()]
    assert all(r["holdout_accuracy"] is not None for r in records)


@pytest.mark.ray
@pytest.mark.slow
def test_a_relative_store_and_a_users_mistake_on_workers_through_the_cli(
    ray_cluster, tiny_store: str, tmp_path: Path
) -> None:
    """`--store ./store` as users type it works on workers (the commands join this module's
    cluster with `--address`: its workers were started elsewhere, in another folder); a mistake
    found there is one line, exit 2, no retry."""
    import ray

    cwd = Path(tiny_store).parent
    good = tmp_path / "good.yaml"
    good.write_text("strategies: [keep, fresh_all]\nparams: {epochs: 2}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategies: [{graft: {freeze: 9, epochs: 2}}]\nseeds: [0, 1]\nmax_failures: 2\n")
    ctrain = [
        sys.executable,
        "-m",
        "continual_trainer",
        "sweep",
        "--store",
        "./" + Path(tiny_store).name,
        "--json",
        "--address",
        ray.get_runtime_context().gcs_address,
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ok = subprocess.run([*ctrain, "--config", str(good)], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    out = json.loads(ok.stdout.strip().splitlines()[-1])
    assert out["finished"] == out["trials"] == 2 and "Ray" in out["executor"]
    failed = subprocess.run(
        [*ctrain, "--config", str(bad)], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )
    assert failed.returncode == 2
    assert failed.stderr.count("\n") == 1 and "only 2 hidden layers" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr and "none of 2 trials finished" in failed.stderr
    assert json.loads(failed.stdout.strip().splitlines()[-1])["exit_code"] == 2
