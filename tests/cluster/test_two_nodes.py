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

    jobs = json.loads(sys.argv[1])  # [store, strategy or "sweep", kill an actor during it]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    killed, armed = [], threading.Event()

    def kill_a_shard_trainer():  # SIGKILL one actor's process while it trains a round
        while True:
            armed.wait()
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        title = f.read()
                except OSError:
                    continue
                if title.startswith(b"ray::ShardTrainer.steps") and armed.is_set():
                    time.sleep(1.0)  # a few rounds in
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                    armed.clear()
                    break
            time.sleep(0.05)

    threading.Thread(target=kill_a_shard_trainer, daemon=True).start()
    for store, job, kill in jobs:  # one after another on the same two-node cluster
        before = len(killed)
        armed.set() if kill else armed.clear()
        if job == "sweep":  # Ray Tune trials, each reading the store itself
            import continual_trainer as ct
            spec = {"strategies": ["fresh_new"], "params": {"epochs": 3}, "seeds": [0]}
            swept = ct.open_store(store).sweep(spec, ray=True, memory_budget="1KB")
            print(json.dumps({"finished": swept.finished, "failures": len(swept.failures)}))
            code = 0
        else:
            code = main(["update", "--store", store, "--strategy", job, "--actors", "2", "--memory-budget", "1KB",
                         "--sync-steps", "5", "--set", "epochs=10", "--set", "batch_size=32", "--promote", "never",
                         "--json"])
        armed.clear()
        print(json.dumps({"exit_code": code, "killed": len(killed) - before}), flush=True)
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.fixture(scope="module")
def on_two_nodes(s3_server, tmp_path_factory) -> dict[str, list[tuple[dict, dict]]]:
    """One two-node cluster (its start is most of the time) for both tests' jobs: on a shared
    folder, an update whose actor is killed in the middle; on S3, averaging and a sweep (bagging
    reads its row groups as averaging does, and is run on actors by test_parallel.py). For each
    job, its outcome (update's JSON, or the sweep's counts) and how it ended (exit code, actors
    killed during it)."""
    folder = _drift_store(tmp_path_factory.mktemp("folder"), n=1500, row_group=250)
    s3 = _drift_store(tmp_path_factory.mktemp("s3"), n=1500, row_group=250, uri=s3_server())
    jobs = [(folder, "finetune_all", True)] + [(s3, job, False) for job in ("finetune_all", "sweep")]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2 * len(jobs), proc.stdout[-3000:]
    runs = list(zip(lines[::2], lines[1::2], strict=True))
    return {"folder": folder, "s3": s3, "on folder": runs[:1], "on s3": runs[1:]}


@pytest.mark.ray
@pytest.mark.slow
def test_actors_on_two_nodes_read_a_shared_folder_and_survive_a_killed_actor(on_two_nodes) -> None:
    store = on_two_nodes["folder"]
    ((outcome, run),) = on_two_nodes["on folder"]
    assert run == {"exit_code": 0, "killed": 1}
    execution = Store.open(store).manifest(outcome["version"]).execution
    assert execution["mode"] == "model_averaging" and execution["replaced"] == 1
    assert outcome["metrics"]["holdout_accuracy"] > 0.85
    check_store(store)
    assert len(Store.open(store).versions()) == 2  # the first model and this update, nothing half-written


@pytest.mark.ray
@pytest.mark.slow
def test_actors_and_trials_on_two_nodes_read_a_store_on_s3(on_two_nodes) -> None:
    store = on_two_nodes["s3"]
    (averaged, run_a), (swept, run_s) = on_two_nodes["on s3"]
    assert run_a == {"exit_code": 0, "killed": 0}
    assert Store.open(store).manifest(averaged["version"]).execution["mode"] == "model_averaging"
    assert averaged["metrics"]["holdout_accuracy"] > 0.8
    assert run_s["exit_code"] == 0 and swept == {"finished": 1, "failures": 0}
    check_store(store)
