"""A process killed at every named crash point of every command that writes leaves a store that
`ctrain verify` passes (one valid CURRENT, every committed file matching its sha256, the
lineage whole, no half batch), and the same command run again works.

The points are `data.failpoints.POINTS`: a test asks the process to `os._exit(77)` there, as a
`kill -9` landing at that moment would. Random kills (test_reliability.py) land mostly during
start-up; these land exactly between a file's bytes and its rename, between a version's
manifest and the CURRENT swap, between gc's choice and its deletions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from continual_trainer.data.failpoints import POINTS
from continual_trainer.data.storage import Store
from tests.conftest import make_table

KILLED = 77

CASES = [
    ("init", point)
    for point in (
        "write.after-temp",
        "init.after-store-json",
        "ingest.after-data",
        "write.after-rename",
        "version.after-members",
        "version.after-manifest",
        "promote.before-swap",
        "promote.after-swap",
    )
] + [
    ("ingest", "write.after-temp"),
    ("ingest", "ingest.after-data"),
    ("update", "version.after-members"),
    ("update", "version.after-manifest"),
    ("update", "promote.before-swap"),
    ("update", "promote.after-swap"),
    ("promote", "promote.before-swap"),
    ("promote", "promote.after-swap"),
    ("rollback", "promote.before-swap"),
    ("rollback", "promote.after-swap"),
    ("gc", "gc.after-listing"),
    ("gc", "gc.after-manifest-delete"),
    ("stream", "ingest.after-data"),
    ("stream", "version.after-manifest"),
    ("stream", "promote.before-swap"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A store with two versions (one never promoted, for gc) and a new batch to learn."""
    tmp = tmp_path_factory.mktemp("crash")
    for name, seed, shift in (("old", 0, 0.0), ("new", 1, 0.3), ("later", 2, 0.5)):
        pq.write_table(make_table(seed=seed, shift=shift), tmp / f"{name}.parquet")
    store = str(tmp / "store")
    assert main(["init", "--store", store, "--data", str(tmp / "old.parquet"), "--label", "y", "--epochs", "3"]) == 0
    assert main(["ingest", "--store", store, str(tmp / "new.parquet")]) == 0
    argv = ["update", "--store", store, "--strategy", "finetune_new", "--set", "epochs=2", "--promote", "always"]
    assert main(argv) == 0
    assert main(["ingest", "--store", store, str(tmp / "later.parquet")]) == 0
    argv = ["update", "--store", store, "--strategy", "finetune_new", "--set", "epochs=2", "--promote", "never"]
    assert main(argv) == 0
    return tmp


def _argv(command: str, store: str, tmp: Path) -> list[str]:
    if command == "promote":  # the version the base store never promoted
        opened = Store.open(store)
        return ["promote", "--store", store, next(v for v in opened.versions()[::-1] if v != opened.current())]
    data = {"old": str(tmp / "old.parquet"), "new": str(tmp / "new-copy.parquet")}
    return {
        "init": ["init", "--store", store, "--data", data["old"], "--label", "y", "--epochs", "2"],
        "ingest": ["ingest", "--store", store, data["new"]],
        "update": [
            "update",
            "--store",
            store,
            "--strategy",
            "finetune_new",
            "--set",
            "epochs=2",
            "--promote",
            "always",
        ],
        "rollback": ["rollback", "--store", store],
        "gc": ["gc", "--store", store, "--keep", "0"],
        "stream": [
            "stream",
            "--store",
            store,
            "--inbox",
            str(tmp / "inbox"),
            "--once",
            "--policy",
            "fresh_all",  # 30 epochs beat the store's 3-epoch model, so the stream promotes
            "--set",
            "epochs=30",
            "--local",
        ],
    }[command]


@pytest.mark.slow
@pytest.mark.parametrize(("command", "point"), CASES, ids=[f"{c}-{p}" for c, p in CASES])
def test_a_kill_at_every_named_point_leaves_a_store_that_verifies(
    command: str, point: str, base: Path, tmp_path: Path, capsys
) -> None:
    assert point in POINTS
    store = str(tmp_path / "store")
    if command != "init":
        shutil.copytree(base / "store", store, symlinks=True)
    pq.write_table(make_table(seed=5, shift=0.4), tmp_path / "new-copy.parquet")
    (tmp_path / "inbox").mkdir()
    pq.write_table(make_table(seed=6, shift=0.6), tmp_path / "inbox" / "b.parquet")
    shutil.copy(base / "old.parquet", tmp_path / "old.parquet")
    argv = _argv(command, store, tmp_path)

    env = {**os.environ, "CTRAIN_FAILPOINT": point, "TF_CPP_MIN_LOG_LEVEL": "3"}
    killed = subprocess.run([sys.executable, "-m", "continual_trainer", *argv], env=env, capture_output=True, text=True)
    assert killed.returncode == KILLED, f"{command} never reached {point}: {killed.returncode} {killed.stderr[-300:]}"

    if os.path.exists(os.path.join(store, "store.json")):
        problems, _ = Store.open(store).verify()
        assert problems == [], problems
    # The next command works: the same one again, unless the kill came after its work was done
    # (a second init finds a store, a second rollback undoes the first; a second
    # promote says the version is current already, exit 0).
    done = point == "promote.after-swap" and command in ("init", "rollback")
    assert main(["history", "--store", store] if done else argv) == 0, capsys.readouterr().err
    problems, notes = Store.open(store).verify()
    assert problems == [] and not [n for n in notes if "init" in n], (problems, notes)
    assert main(["history", "--store", store]) == 0
