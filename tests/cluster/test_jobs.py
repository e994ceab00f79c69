"""`ray job submit` against a real head on loopback, with token authentication on."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_members(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True).stdout
    return [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def _stop_session(sid: int) -> None:
    """End every process of the head's session (and only those): TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_members(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + 10
        while _session_members(sid) and time.time() < deadline:
            time.sleep(0.5)


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_submitted_as_a_ray_job(tiny_store: str, tmp_path: Path) -> None:
    port, dash, agent = _free_port(), _free_port(), _free_port()
    # Ray's Unix sockets live under --temp-dir, and socket paths are limited to ~107 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="ctrj-", dir="/tmp")
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        # The head started from this environment activated, as the README says (`. .venv/bin/activate`):
        # the job's `python` is this environment's.
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={port}",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            # Its job agent's own port: the default (52365) is taken by any other Ray on this
            # machine (another test worker's), and the head then has no agent to run jobs.
            f"--dashboard-agent-listen-port={agent}",
            "--num-cpus=2",
            f"--temp-dir={ray_tmp}",
            "--block",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while True:  # the head takes a few seconds before it accepts jobs
            ok = (
                subprocess.run(
                    [str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True
                ).returncode
                == 0
            )
            if ok:
                break
            assert time.time() < deadline, "the Ray head did not accept jobs within 90 s"
            time.sleep(2)
        refused = subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", address],
            env={**env, "RAY_AUTH_TOKEN": "wrong-token"},
            capture_output=True,
            text=True,
        )
        assert refused.returncode != 0, "the head accepted a wrong token"

        # What a user submits: a project folder (a sweep spec, a model builder) as the working
        # directory, and this package as one folder in the runtime environment's py_modules
        # (`make ray-package` runs the same pip command), so that the job's processes import it
        # from there, not from whatever the cluster's nodes have installed.
        project, package = tmp_path / "project", tmp_path / "ray-package"
        shutil.copytree(REPO / "examples", project / "examples")
        (project / "sweep.yaml").write_text("strategies: [keep, finetune_all]\nparams: {epochs: 2}\nseeds: [0]\n")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(package), str(REPO)],
            check=True,
            capture_output=True,
        )
        runtime_env = json.dumps({"py_modules": [str(package / "continual_trainer")]})

        def submit(*entrypoint: str) -> str:
            """`ray job submit` of the project with the package; the job must succeed; its log is
            returned. The head's job agent may register after its dashboard answers (HTTP 500
            "No available agent to submit job, please try again later"): that refusal is
            retried, nothing else is."""
            deadline = time.time() + 90
            while True:
                job = subprocess.run(
                    [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(project),
                     "--runtime-env-json", runtime_env, "--", *entrypoint],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )  # fmt: skip
                if job.returncode == 0 or "No available agent" not in job.stderr or time.time() > deadline:
                    break
                time.sleep(2)
            assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-2000:] + job.stderr[-2000:]
            return job.stdout

        trainer = "python -m continual_trainer"
        where = "python -c 'import continual_trainer; print(\"package:\", continual_trainer.__file__)'"
        # A model builder from the project (examples/digits.py) ships with the job's working
        # directory: the driver builds the first model with it, and Tune's workers fresh ones.
        # One job for both (a job's start, its runtime environment included, is most of its time).
        data = tmp_path / "data"
        subprocess.run([sys.executable, str(REPO / "examples" / "make_data.py"), str(data)], check=True)
        digits, spec2 = tmp_path / "digits", tmp_path / "fresh.yaml"
        spec2.write_text("strategies: [{fresh_all: {epochs: 1}}]\n")
        steps = [
            where,
            f"{trainer} sweep --store {tiny_store} --config sweep.yaml --json",
            f"{trainer} init --store {digits} --data {data}/digits-old.parquet --label digit --shape image=8,8,1 "
            "--model examples.digits:cnn --epochs 1",
            f"{trainer} ingest --store {digits} {data}/digits-new.parquet",
            f"{trainer} sweep --store {digits} --config {spec2} --json",
        ]
        log = submit("sh", "-c", " && ".join(steps))
        imported = re.search(r"package: (\S+)", log)  # the job's output (its command line shows `package:",`)
        assert imported and "/runtime_resources/py_modules_files/" in imported.group(1), log[-2000:]
        (sweep,) = Path(tiny_store, "sweeps").iterdir()
        assert pq.read_table(sweep / "results.parquet").num_rows == 2
        (sweep,) = (digits / "sweeps").iterdir()
        assert pq.read_table(sweep / "results.parquet").num_rows == 1
    finally:
        _stop_session(head.pid)
        head.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
