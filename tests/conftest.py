"""Shared fixtures: tiny tables, Parquet files and stores, small enough to train in a second."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Credentials for the S3-compatible test server, set before any Ray worker starts so
# that workers writing to an s3:// store inherit them.
for key, value in {
    "AWS_ACCESS_KEY_ID": "ctrain-test",
    "AWS_SECRET_ACCESS_KEY": "ctrain-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(key, value)

N_FEATURES = 5
TINY_EPOCHS = {"epochs": "3"}

# How many times `stress` tests repeat a run (`make stress`: 100; `make test`: this default).
STRESS_RUNS = int(os.environ.get("CTRAIN_STRESS_RUNS", "3"))  # make test: 3; make stress: 100


def make_table(n: int = 120, seed: int = 0, n_classes: int = 2, shift: float = 0.0) -> pa.Table:
    """A small separable classification table with columns f0..f4 and label `y`."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n,
        n_features=N_FEATURES,
        n_informative=3,
        n_redundant=1,
        n_classes=n_classes,
        n_clusters_per_class=1,
        random_state=seed,
    )
    x = x + shift
    return pa.table({**{f"f{i}": pa.array(x[:, i]) for i in range(N_FEATURES)}, "y": pa.array(y.astype(np.int64))})


@pytest.fixture(autouse=True)
def no_status_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands print a progress status line to a non-terminal stderr every 10 s; on a busy
    machine a slow test would see one beside the one error line it checks. Tests of progress
    set CTRAIN_STATUS_SECONDS themselves."""
    monkeypatch.setenv("CTRAIN_STATUS_SECONDS", "3600")


@pytest.fixture
def tiny_table() -> pa.Table:
    return make_table()


@pytest.fixture(scope="session")
def dead_pid() -> int:
    """The id of a process that has ended (for leftovers of writers that died)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@pytest.fixture
def bare_store(tmp_path: Path):
    """A store with a two-column schema and no batch or version yet (init's claim released)."""
    from continual_trainer.data.schema import Schema
    from continual_trainer.data.storage import Store, StoreMeta

    made = Store.create(str(tmp_path / "store"), StoreMeta(Schema(("a", "b"), "y", (0, 1)), "mlp:4"))
    made.release_init()
    return made


@pytest.fixture
def write_parquet(tmp_path: Path) -> Callable[..., str]:
    """Write a table (or raw bytes) under tmp_path and return its path."""

    def write(obj: pa.Table | bytes, name: str = "batch.parquet") -> str:
        path = tmp_path / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(obj, bytes):
            path.write_bytes(obj)
        else:
            pq.write_table(obj, path)
        return str(path)

    return write


@pytest.fixture
def tiny_store(tmp_path: Path, write_parquet: Callable[..., str]) -> str:
    """A store with a first model (3 epochs) and one new batch waiting."""
    from continual_trainer.store_setup import ingest_files, init_store
    from continual_trainer.trainer.loop import LoopConfig

    uri = str(tmp_path / "store")
    init_store(
        uri, write_parquet(make_table(seed=0), "old.parquet"), "y", model="mlp:8,4", loop=LoopConfig(epochs=3), seed=0
    )
    ingest_files(uri, [write_parquet(make_table(seed=1, shift=0.5), "new.parquet")])
    return uri


def snapshot(root: str) -> dict[str, bytes]:
    """Every file below `root` (but quarantine/), by relative path: to prove nothing changed."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if not rel.startswith("quarantine"):
                with open(full, "rb") as f:
                    out[rel] = f.read()
    return out


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto) on loopback; yields a function making store URIs."""
    import socket
    import uuid

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()

    def uri(name: str = "store") -> str:
        return (
            f"s3://ctrain-{uuid.uuid4().hex[:8]}/{name}?endpoint_override=127.0.0.1:{port}"
            "&scheme=http&allow_bucket_creation=true"
        )

    yield uri
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """A session-wide local Ray (2 CPUs, token authentication as Ray 2.60 sets it up)."""
    import ray

    from continual_trainer.cluster.runtime import connect

    started = not ray.is_initialized()
    resources = connect(num_cpus=2)
    yield resources
    if started:
        ray.shutdown()
