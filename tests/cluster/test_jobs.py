"""`ray job submit` against a real head on loopback, with token authentication on."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
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


def guide_job_command() -> list[str]:
    """The `ray job submit` command of the Ray guide (docs/guides/ray.md), as a user copies it:
    its lines joined, split as a shell splits them, the leading `RAY_AUTH_*=` assignments (the
    environment) left out."""
    text = (REPO / "docs" / "guides" / "ray.md").read_text()
    block = next(b for b in text.split("```")[1::2] if "ray job submit" in b)
    command = block[block.index("RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... ray job submit") :]
    argv = shlex.split(command.replace("\\\n", " ").split("\n")[0])
    assert argv[:2] == ["RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN=..."], argv
    return argv[2:]


@pytest.mark.ray
@pytest.mark.slow
def test_the_guides_job_command_runs_a_sweep_on_a_head_with_token_auth(tmp_path: Path, monkeypatch) -> None:
    """The Ray guide's command, submitted as written from a checkout-like folder (its relative paths
    `examples` and `build/ray-package/continual_trainer` resolved there), with only the head's
    address, the token (in the environment) and the store put in. The store's model comes from a
    builder in the working directory (`digits:cnn`), so Tune's workers must import it from there
    to train `fresh_all`; a second job prints where the package was imported from."""
    from continual_trainer.cli import main

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

        # A checkout as the README's commands see it: `examples/` (here a spec of our own, small)
        # and the folder `make ray-package` builds (the same pip command).
        checkout = tmp_path / "checkout"
        shutil.copytree(REPO / "examples", checkout / "examples")
        (checkout / "examples" / "sweep.yaml").write_text("strategies: [keep, {fresh_all: {epochs: 1}}]\nseeds: [0]\n")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
             str(checkout / "build" / "ray-package"), str(REPO)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        data, store = tmp_path / "data", tmp_path / "digits"
        subprocess.run([sys.executable, str(REPO / "examples" / "make_data.py"), str(data)], check=True)
        monkeypatch.chdir(checkout / "examples")  # the builder is found beside the user, as `digits:cnn`
        init = ["init", "--store", str(store), "--data", str(data / "digits-old.parquet"), "--label", "digit"]
        assert main([*init, "--shape", "image=8,8,1", "--model", "digits:cnn", "--epochs", "1"]) == 0
        assert main(["ingest", "--store", str(store), str(data / "digits-new.parquet")]) == 0
        monkeypatch.chdir(checkout)

        readme = guide_job_command()
        command = [
            str(store) if arg == "s3://bucket/store" else address if arg == "http://HEAD:8265" else arg
            for arg in readme
        ]
        assert command != readme and str(store) in command and address in command, readme
        command[0] = str(BIN / "ray")

        def submit(argv: list[str]) -> str:
            """A job submitted; it must succeed; its log is returned. The head's job agent may
            register after its dashboard answers (HTTP 500 "No available agent to submit job,
            please try again later"): that refusal is retried, nothing else is."""
            deadline = time.time() + 90
            while True:
                job = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
                if job.returncode == 0 or "No available agent" not in job.stderr or time.time() > deadline:
                    break
                time.sleep(2)
            assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-2000:] + job.stderr[-2000:]
            return job.stdout

        submit(command)
        (sweep,) = (store / "sweeps").iterdir()
        results = pq.read_table(sweep / "results.parquet").to_pylist()
        assert sorted(r["strategy"] for r in results) == ["fresh_all", "keep"], results
        # The same submission with another entrypoint: where the job imported the package from.
        where = "import continual_trainer; print('package:', continual_trainer.__file__)"
        log = submit([*command[: command.index("--") + 1], "python", "-c", where])
        imported = re.search(r"package: (\S+)", log)  # the job's output (its command line shows `package:',`)
        assert imported and "/runtime_resources/py_modules_files/" in imported.group(1), log[-2000:]
    finally:
        _stop_session(head.pid)
        head.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
