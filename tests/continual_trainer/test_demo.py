"""The demo: in this process by default, and its store is one every command works on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from continual_trainer.cli import main
from continual_trainer.data.storage import Store
from continual_trainer.executor import LocalExecutor
from continual_trainer.sweep import SweepSpec, run_sweep

README = Path(__file__).parents[2] / "docs" / "reference-experiment.md"
TOLERANCE = 0.01  # accuracy on the 1,000 test rows (10 rows): other CPUs and library builds may round differently


def readme_table() -> dict[str, tuple[float, float]]:
    """The reference experiment's table in the README: strategy -> (test accuracy, log loss)."""
    section = README.read_text()
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].replace(".", "").isdigit():
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    return rows


def check_against_the_readme(results: list[dict]) -> None:
    table, got = readme_table(), {r["strategy"]: r for r in results}
    assert set(got) == set(table), "the README's table lists other strategies than the demo runs"
    off = {
        name: (round(r["test_accuracy"], 3), table[name][0])
        for name, r in got.items()
        if abs(r["test_accuracy"] - table[name][0]) > TOLERANCE
    }
    assert off == {}, f"(measured, README) beyond ±{TOLERANCE}: {off}"
    keep = got["keep"]["test_log_loss"]  # every strategy that trains changed the model it started from
    same = [n for n, r in got.items() if n != "keep" and abs(r["test_log_loss"] - keep) < 1e-4]
    assert same == [], f"scored exactly as keep, as if they never trained: {same}"


@pytest.mark.slow
def test_the_demo_runs_here_reproduces_the_readme_table_and_its_store_takes_a_sweep(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["demo", "--store", str(tmp_path / "demo"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["executor"] == "this process (no Ray)"
    check_against_the_readme(out["results"])
    store = Store.open(out["store"])
    assert store.meta.holdout_fraction > 0
    spec = SweepSpec.parse((Path(__file__).parents[2] / "examples" / "sweep.yaml").read_text())
    small = SweepSpec(tuple(t for t in spec.trials if t.seed == 0 and t.strategy in ("keep", "finetune_new")), "")
    assert run_sweep(store, LocalExecutor(), small).finished == len(small.trials) == 2


def test_the_readme_table_check_fails_for_a_demo_that_does_not_train() -> None:
    from continual_trainer import strategies

    table = readme_table()
    assert len(table) == len(strategies.names()) >= 14
    untrained = [{"strategy": n, "test_accuracy": table["keep"][0], "test_log_loss": table["keep"][1]} for n in table]
    with pytest.raises(AssertionError):
        check_against_the_readme(untrained)


@pytest.mark.slow
@pytest.mark.ray
def test_demo_on_ray_prints_the_same_table_says_where_and_the_next_step(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    store = tmp_path / "r"
    proc = subprocess.run(
        [sys.executable, "-m", "continual_trainer", "demo", "--store", str(store), "--ray", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in proc.stdout.splitlines() if line.startswith("| ")
    ]
    results = [{"strategy": r[0], "test_accuracy": float(r[1]), "test_log_loss": float(r[2])} for r in rows[2:]]
    check_against_the_readme(results)
    assert "ran on: a local Ray started here" in proc.stdout
    run = "python -m continual_trainer"  # as it was run: the next steps run the same way
    best = max(results, key=lambda r: (r["test_accuracy"], -r["test_log_loss"]))
    version = next(v for v in Store.open(str(store)).versions() if f"-{best['strategy']}-" in v)
    assert proc.stdout.strip().splitlines()[-1] == (
        f"next: {run} promote --store {store} {version[-4:]}; {run} history --store {store}; "
        f"{run} sweep --store {store} --config examples/sweep.yaml; {run} serve --store {store}"
    )
    # It says what it kept and promoted, and why its table and `history` may rank differently.
    assert f"kept: {len(results)} versions, one per strategy; promoted: none" in proc.stdout
    assert "this table scores the tutorial's separate test split" in proc.stdout
