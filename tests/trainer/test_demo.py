"""The demo: in this process by default, and its store is one every command works on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from continual_trainer.data.storage import Store
from continual_trainer.trainer.demo import run_demo
from continual_trainer.trainer.executor import LocalExecutor
from continual_trainer.trainer.sweep import SweepSpec, run_sweep


def test_the_demo_store_takes_the_next_step_a_sweep(tmp_path: Path) -> None:
    store_uri, results, _ = run_demo(LocalExecutor(), str(tmp_path / "demo"))
    assert len(results) >= 9 and all(0.5 < r["test_accuracy"] <= 1 for r in results)
    store = Store.open(store_uri)
    assert store.meta.holdout_fraction > 0
    spec = SweepSpec.parse((Path(__file__).parents[2] / "examples" / "sweep.yaml").read_text())
    small = SweepSpec(tuple(t for t in spec.trials if t.seed == 0 and t.strategy in ("keep", "finetune_new")), "")
    assert run_sweep(store, LocalExecutor(), small).finished == len(small.trials) == 2


@pytest.mark.slow
def test_ctrain_demo_runs_in_this_process_unless_asked_and_says_where(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "continual_trainer", "demo", "--store", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ran on: this process (no Ray)" in proc.stdout
    assert f"next: ctrain sweep --store {tmp_path / 'd'} --config examples/sweep.yaml" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "continual_trainer", "demo", "--store", str(tmp_path / "r"), "--ray", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["executor"].startswith("a local Ray started here")
