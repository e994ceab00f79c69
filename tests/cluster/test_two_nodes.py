"""Out of core on a two-node cluster: each actor reads its own row groups of a store on a shared
folder or on S3, and an actor killed in the middle of an epoch is replaced."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from continual_trainer.data.storage import Store
from tests.cluster.test_parallel import _drift_store
from tests.continual_trainer.test_reliability import check_store

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import ray
    from ray.cluster_utils import Cluster
    from continual_trainer.cli import main

    store, jobs, kill = sys.argv[1], sys.argv[2].split(","), sys.argv[3] == "kill"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    killed = []

    def kill_a_shard_trainer():  # SIGKILL one actor's process while it trains a round
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        title = f.read()
                except OSError:
                    continue
                if title.startswith(b"ray::ShardTrainer.steps"):
                    time.sleep(1.0)  # a few rounds in
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                    return
            time.sleep(0.05)

    if kill:
        threading.Thread(target=kill_a_shard_trainer, daemon=True).start()
    for job in jobs:  # one after another on the same two-node cluster
        if job == "sweep":  # Ray Tune trials, each reading the store itself
            import continual_trainer as ct
            spec = {"strategies": ["fresh_new"], "params": {"epochs": 3}, "seeds": [0]}
            swept = ct.open_store(store).sweep(spec, ray=True, memory_budget="1KB")
            print(json.dumps({"finished": swept.finished, "failures": len(swept.failures)}))
            code = 0
        else:
            code = main(["update", "--store", store, "--strategy", job, "--actors", "2", "--memory-budget", "1KB",
                         "--sync-steps", "5", "--set", "epochs=20", "--set", "batch_size=32", "--promote", "never",
                         "--json"])
        print(json.dumps({"exit_code": code, "killed": len(killed)}), flush=True)
    ray.shutdown()
    cluster.shutdown()
""")


def _on_two_nodes(store: str, jobs: list[str], kill: bool) -> list[tuple[dict, dict]]:
    """Run `jobs` (strategies to update with, or "sweep") on one two-node cluster; for each its
    outcome (update's JSON, or the sweep's counts) and how it ended (exit code, actors killed)."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, store, ",".join(jobs), "kill" if kill else "no"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2 * len(jobs), proc.stdout[-3000:]
    return list(zip(lines[::2], lines[1::2], strict=True))


@pytest.mark.ray
@pytest.mark.slow
def test_actors_on_two_nodes_read_a_shared_folder_and_survive_a_killed_actor(tmp_path: Path) -> None:
    store = _drift_store(tmp_path, row_group=250)
    ((outcome, run),) = _on_two_nodes(store, ["finetune_all"], kill=True)
    assert run == {"exit_code": 0, "killed": 1}
    execution = Store.open(store).manifest(outcome["version"]).execution
    assert execution["mode"] == "model_averaging" and execution["replaced"] == 1
    assert outcome["metrics"]["holdout_accuracy"] > 0.85
    check_store(store)
    assert len(Store.open(store).versions()) == 2  # the first model and this update, nothing half-written


@pytest.mark.ray
@pytest.mark.slow
def test_actors_and_trials_on_two_nodes_read_a_store_on_s3(s3_server, tmp_path: Path) -> None:
    store = _drift_store(tmp_path, n=1500, row_group=250, uri=s3_server())
    (averaged, run_a), (bagged, run_b), (swept, run_s) = _on_two_nodes(
        store, ["finetune_all", "ensemble_all", "sweep"], kill=False
    )
    for (outcome, run), mode in (((averaged, run_a), "model_averaging"), ((bagged, run_b), "bagging")):
        assert run == {"exit_code": 0, "killed": 0}
        assert Store.open(store).manifest(outcome["version"]).execution["mode"] == mode
        assert outcome["metrics"]["holdout_accuracy"] > 0.8
    assert run_s["exit_code"] == 0 and swept == {"finished": 1, "failures": 0}
    check_store(store)
