"""No command aborts at exit: runs of a failing and a succeeding predict and update, 3 at a time
(`make stress`: 100 of each, as when the abort was found; `make test`: CTRAIN_STRESS_RUNS,
default 3 of each).

The abort seen before ("terminate called without an active exception", exit 134)
came from an Arrow pool thread releasing a Python file object during interpreter
shutdown (see `data.parquet.arrow_owned`); `ctrain` also leaves without the
interpreter's teardown (`trainer.cli.run`).
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import STRESS_RUNS, make_table

RUNS = STRESS_RUNS


@pytest.mark.slow
@pytest.mark.stress
def test_no_exit_path_aborts(tiny_store: str, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    pq.write_table(make_table(seed=4).drop_columns(["y"]), good)
    pq.write_table(make_table(seed=4).drop_columns(["y", "f2"]), bad)
    ctrain = [sys.executable, "-m", "continual_trainer"]
    cases = {
        "predict ok": (0, ["predict", "--store", tiny_store, "--data", str(good), "--out", "{out}"]),
        "predict missing column": (2, ["predict", "--store", tiny_store, "--data", str(bad), "--out", "{out}"]),
        "update ok": (0, ["update", "--store", tiny_store, "--strategy", "fresh_new", "--set", "epochs=1"]),
        "update bad parameter": (2, ["update", "--store", tiny_store, "--strategy", "graft", "--set", "freeze=9"]),
    }

    def run(job: tuple[str, int]) -> tuple[str, int, str]:
        name, i = job
        argv = [a.replace("{out}", str(tmp_path / f"out-{i}.parquet")) for a in cases[name][1]]
        if name == "update ok":
            argv += ["--promote", "never"]  # the batch stays new: every run trains
        proc = subprocess.run([*ctrain, *argv], capture_output=True, text=True, timeout=300)
        return name, proc.returncode, proc.stderr

    jobs = [(name, i) for i in range(RUNS) for name in cases]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, jobs))
    aborted = [(n, rc) for n, rc, err in results if rc < 0 or rc == 134 or "terminate called" in err]
    assert aborted == [], f"{len(aborted)} of {len(results)} runs aborted: {aborted[:5]}"
    wrong = [(n, rc, err[-300:]) for n, rc, err in results if rc != cases[n][0]]
    assert wrong == [], wrong[:3]
    for name, _, err in results:
        if cases[name][0] == 2:
            assert len(err.strip().splitlines()) == 1, err
