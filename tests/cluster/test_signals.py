"""SIGTERM and SIGINT during a sweep or a stream on a local Ray: the CLI's clean stop, not Ray's.

Before: Ray's core worker put a native handler on SIGTERM when the driver joined Ray, so a
terminated sweep printed `*** SIGTERM received ***` with a stack dump and exited 1; once that
was re-armed, the signal's exception surfaced wrapped in a SystemError from Ray's native wait.
A stream on Ray ignored SIGTERM while it trained (Ray's `wait` without a timeout never returned
to Python), and a SIGTERM while `ray.init` started Ray exited 15 through Ray's own handler,
leaving Ray's agents running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from tests.conftest import make_table

RAYLET = "raylet"  # Ray is starting: the driver is inside ray.init
TRAINING = "^ray::(ImplicitFunc.train|TrainerActor.run)"  # a Tune trial or a trainer actor runs its work


def _running_in(session: int, pattern: str) -> bool:
    found = subprocess.run(["pgrep", "-s", str(session), "-f", pattern], capture_output=True, text=True)
    return bool(found.stdout.strip())


COMMANDS = {
    "sweep": ["sweep", "--config", "{tmp}/sweep.yaml"],
    "stream": ["stream", "--inbox", "{tmp}/inbox", "--policy", "fresh_all", "--set", "epochs=1000000"],
}


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize(
    ("command", "sig", "code", "word", "when"),
    [
        ("sweep", signal.SIGTERM, 143, "terminated", TRAINING),
        ("sweep", signal.SIGINT, 130, "interrupted", TRAINING),
        ("stream", signal.SIGTERM, 143, "terminated", TRAINING),
        ("stream", signal.SIGTERM, 143, "terminated", RAYLET),
    ],
    ids=["sweep-SIGTERM-training", "sweep-SIGINT-training", "stream-SIGTERM-training", "stream-SIGTERM-starting-ray"],
)
def test_a_signal_during_ray_work_is_one_line_and_leaves_no_ray_behind(
    command: str, sig: int, code: int, word: str, when: str, tmp_path: Path
) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CTRAIN_STATUS_SECONDS": "1"}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, started by the command
    store = str(tmp_path / "store")
    (tmp_path / "inbox").mkdir()
    pq.write_table(make_table(seed=0), tmp_path / "old.parquet")
    pq.write_table(make_table(seed=1, shift=0.3), tmp_path / "new.parquet")
    pq.write_table(make_table(seed=2, shift=0.3), tmp_path / "inbox" / "next.parquet")
    ctrain = [sys.executable, "-m", "continual_trainer"]
    for argv in (  # the store, made in this process (only the command under test needs its own)
        ["init", "--store", store, "--data", str(tmp_path / "old.parquet"), "--label", "y", "--epochs", "2"],
        ["ingest", "--store", store, str(tmp_path / "new.parquet")],
    ):
        assert main([*argv, "--quiet"]) == 0
    (tmp_path / "sweep.yaml").write_text("strategies: [fresh_all]\nparams: {epochs: 1000000}\nseeds: [0, 1]\n")
    argv = [a.format(tmp=tmp_path) for a in COMMANDS[command]]
    err = tmp_path / "err.txt"
    with open(err, "w") as stderr:
        work = subprocess.Popen(
            [*ctrain, *argv, "--store", store, "--ray", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,  # the command and everything it starts, Ray included
        )
        try:
            deadline = time.monotonic() + 240
            while not _running_in(work.pid, when) and time.monotonic() < deadline and work.poll() is None:
                time.sleep(0.1)
            assert _running_in(work.pid, when), f"no {when} in {work.pid}'s session: {err.read_text()}"
            work.send_signal(sig)
            out, _ = work.communicate(timeout=120)
            text = err.read_text()
            assert work.returncode == code, text
            assert text.strip().splitlines()[-1] == f"ctrain: error: {word}", text
            assert out.strip().splitlines()[-1] == f'{{"error": "{word}", "exit_code": {code}}}'
            if (
                when == TRAINING
            ):  # once Ray has started; the moment it starts, its driver's native handler may print too
                assert "SIGTERM received" not in text, text
            deadline = time.monotonic() + 30
            while subprocess.run(["pgrep", "-r", "R,S,D", "-s", str(work.pid)], capture_output=True).returncode == 0:
                assert time.monotonic() < deadline, "processes the command started still run 30 s after it exited"
                time.sleep(0.5)
        finally:  # whatever failed above, nothing it started keeps training (1e6 epochs)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(work.pid, signal.SIGKILL)
