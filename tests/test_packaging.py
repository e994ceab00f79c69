"""The install: one TensorFlow that runs on CPUs and, with the `gpu` extra, on NVIDIA GPUs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

PROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]


def _requirement(requirements: list[str], name: str) -> str | None:
    return next((r for r in requirements if re.match(rf"{re.escape(name)}(\[|[<>=!~ ]|$)", r)), None)


def test_the_gpu_extra_adds_cuda_to_the_base_tensorflow_in_the_same_range() -> None:
    base = _requirement(PROJECT["dependencies"], "tensorflow")
    assert base is not None and _requirement(PROJECT["dependencies"], "tensorflow-cpu") is None
    gpu = PROJECT["optional-dependencies"]["gpu"]
    assert gpu == [base.replace("tensorflow", "tensorflow[and-cuda]", 1)]


@pytest.mark.slow
def test_the_installed_tensorflow_has_the_gpu_kernels_and_runs_on_the_cpu() -> None:
    """`tensorflow-cpu` is built without CUDA: with it, the gpu extra could not use a GPU."""
    code = "import tensorflow as tf; print(tf.test.is_built_with_cuda(), float(tf.reduce_sum(tf.ones(3))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "3.0"]
