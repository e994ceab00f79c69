"""A worker node removed in the middle of a sweep: the sweep still finishes, every trial once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cluster.test_parallel import _drift_store

SCRIPT = textwrap.dedent("""
    import glob, json, sys, threading, time
    import ray
    from ray.cluster_utils import Cluster
    from continual_trainer.cluster.executor import RayExecutor
    from continual_trainer.data.storage import Store
    from continual_trainer.sweep import SweepSpec, run_sweep

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    spec = SweepSpec.parse(
        "strategies: [{fresh_all: {epochs: 300}}]\\nseeds: [0, 1, 2, 3]\\nmax_failures: 4\\n")
    out = {}
    thread = threading.Thread(target=lambda: out.update(r=run_sweep(Store.open(sys.argv[1]), RayExecutor(), spec)))
    thread.start()
    deadline = time.monotonic() + float(sys.argv[2])
    while not glob.glob(sys.argv[1] + "/sweeps/*/trials/*.json") and time.monotonic() < deadline:
        time.sleep(0.2)  # remove the node once the first trial is recorded, while others run
    removed_while_running = thread.is_alive()
    cluster.remove_node(worker)
    thread.join(timeout=600)
    r = out["r"]
    print(json.dumps({"removed_while_running": removed_while_running, "finished": r.finished,
                      "trials": r.trials, "ids": r.table.column("trial_id").to_pylist(),
                      "failures": [(t, f.message) for t, f in r.failures]}))
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_survives_losing_a_worker_node(tmp_path: Path) -> None:
    store = _drift_store(tmp_path, n=1500)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, store, "120"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["removed_while_running"], "the sweep ended before the node was removed; lengthen the trials"
    assert result["finished"] == result["trials"] == 4, result["failures"]
    assert len(set(result["ids"])) == 4
