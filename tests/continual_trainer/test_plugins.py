"""Third-party strategies, triggers and executors: a pip package declares them in the entry-point
groups `continual_trainer.strategies`, `continual_trainer.triggers` and
`continual_trainer.executors`, and every command finds them by name. A tiny package is built and
installed with pip (into a folder on PYTHONPATH) and used from the command line; a plugin that
fails to load is one warning, and the built-in names still work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import make_table

PACKAGE = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "ctrain-tiny"
        version = "0.1"

        [project.entry-points."continual_trainer.strategies"]
        tiny_blend = "ctrain_tiny.strategy"
        broken = "ctrain_tiny.missing_module"

        [project.entry-points."continual_trainer.triggers"]
        tiny_files = "ctrain_tiny.trigger"

        [project.entry-points."continual_trainer.executors"]
        tiny_local = "ctrain_tiny.executor:make"

        [tool.setuptools]
        packages = ["ctrain_tiny"]
    """,
    "ctrain_tiny/__init__.py": "",
    # A strategy written against the author's surface only (`continual_trainer.strategies`).
    "ctrain_tiny/strategy.py": '''
        from dataclasses import dataclass

        from continual_trainer.strategies import (
            Candidate, Capabilities, Interval, TrainParams, UpdateInputs, clone, fit, param, register,
        )


        @dataclass(frozen=True)
        class BlendParams(TrainParams):
            """A fine-tuned copy blended with the current network."""

            share: float = param(0.5, Interval(float, 0.0, 1.0), "the fine-tuned copy's weight")


        @register("tiny_blend", BlendParams, "the current network and a fine-tuned copy, blended",
                  Capabilities(starts_from="members"))
        def tiny_blend(inputs: UpdateInputs, params: BlendParams) -> Candidate:
            current = inputs.current.members[0]
            tuned = fit(clone(current), inputs, params)
            return Candidate((current, tuned), (1 - params.share, params.share))
    ''',
    "ctrain_tiny/trigger.py": """
        from dataclasses import dataclass

        from continual_trainer.triggers import Decision, NoParams, register


        @register("tiny_files", NoParams, "fires on every second file", needs_labels=False)
        def tiny_files(obs, params, state):
            return Decision(obs.files_since_update >= 2, float(obs.files_since_update), "two files")
    """,
    "ctrain_tiny/executor.py": """
        from continual_trainer.executor import LocalExecutor


        def make(actors):
            return LocalExecutor(workers=1)
    """,
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The package built and installed by pip; the environment that sees it."""
    root = tmp_path_factory.mktemp("plugin")
    source, target = root / "src", root / "site"
    for name, text in PACKAGE.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(textwrap.dedent(text).lstrip())
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(target), str(source)], check=True, capture_output=True)
    assert list(target.glob("ctrain_tiny-0.1.dist-info"))
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _ctrain(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "continual_trainer", *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_a_pip_installed_strategy_trigger_and_executor_are_found_by_name(
    installed: dict[str, str], tiny_store: str, tmp_path: Path
) -> None:
    done = _ctrain(
        installed, "update", "--store", tiny_store, "--strategy", "tiny_blend", "--set", "share=0.25",
        "--set", "epochs=2", "--promote", "never", "--executor", "tiny_local", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["strategy"] == "tiny_blend" and outcome["members"] == 2
    # the broken entry point: one warning naming it, and the command went on
    assert "strategy plugin 'broken' (ctrain_tiny.missing_module) could not be loaded" in done.stderr
    assert "Traceback" not in done.stderr
    rows = tmp_path / "rows.parquet"
    pq.write_table(make_table(n=60, seed=5), rows)
    check = _ctrain(installed, "drift", "--store", tiny_store, "--data", str(rows), "--trigger", "tiny_files", "--json")
    assert check.returncode == 0, check.stderr[-2000:]
    assert "tiny_files" in json.loads(check.stdout.strip().splitlines()[-1])
    unknown = _ctrain(installed, "update", "--store", tiny_store, "--strategy", "tiny_blend", "--set", "share=2")
    assert unknown.returncode == 2 and "share must be" in unknown.stderr  # the plugin's declared constraint
