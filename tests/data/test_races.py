"""The store's life cycle under races: gc beside promotions, two inits on one path.

Each race is forced, not hoped for: one side is held at a failpoint (`name=wait:PATH`) while the
other runs, so removing the lock or claim it guards fails the test every time."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import Manifest
from continual_trainer.data.schema import Schema
from continual_trainer.data.storage import Store, StoreMeta, VersionGone
from continual_trainer.records import prune
from tests.conftest import make_table


def _version(store: Store, parent: str | None, n: int) -> str:
    version = store.new_version_id(f"v{n}")
    store.write_version(version, [(b"member bytes", 2)], Manifest(parent=parent, strategy="test", weights=(1.0,)))
    return version


def _arrive(path: Path, timeout: float = 60.0) -> None:
    """Wait until a process or thread holding at `failpoint=wait:PATH` has arrived there."""
    deadline = time.monotonic() + timeout
    while not Path(f"{path}.arrived").exists():
        assert time.monotonic() < deadline, f"nothing arrived at {path}"
        threading.Event().wait(0.02)


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except VersionGone as e:
            out["gone"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


@pytest.mark.parametrize("first", ["gc", "promote"])
def test_gc_beside_promotions_never_deletes_a_version_that_becomes_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """Before: gc listed a version as never promoted, an update promoted it, gc deleted it, and
    every later command failed on a damaged CURRENT.

    Both orders forced: one side is held inside the CURRENT lock at its failpoint
    (`gc.after-listing`: the doomed versions chosen; `promote.before-swap`: the version checked),
    the other is started and must wait for it. Without the lock (`Versions.lock` made a no-op)
    both fail: gc deletes the version CURRENT now names, or promote swaps to a deleted one."""
    uri = str(tmp_path / "store")
    store = Store.create(uri, StoreMeta(Schema(("a", "b"), "y", (0, 1)), "mlp:4"))
    store.release_init()
    current = _version(store, None, 0)
    assert store.promote(current, None)
    version = _version(store, current, 1)
    gate = tmp_path / "gate"
    point = "gc.after-listing" if first == "gc" else "promote.before-swap"
    monkeypatch.setenv("CTRAIN_FAILPOINT", f"{point}=wait:{gate}")
    gc = lambda: prune(uri, 0)  # noqa: E731
    promote = lambda: Store.open(uri).promote(version, current)  # noqa: E731
    held, held_out = _in_thread(gc if first == "gc" else promote)
    _arrive(gate)
    monkeypatch.delenv("CTRAIN_FAILPOINT")  # the other side runs straight through
    other, other_out = _in_thread(promote if first == "gc" else gc)
    other.join(0.5)
    assert other.is_alive(), "the other side ran while the first held the CURRENT lock"
    gate.touch()
    held.join(30)
    other.join(30)
    gc_out, promote_out = (held_out, other_out) if first == "gc" else (other_out, held_out)
    now = store.current()  # never "CURRENT is damaged"
    assert now in store.versions()
    if first == "gc":  # gc chose the never-promoted version first: it is gone, promote says so
        assert version in gc_out["value"] and "gone" in promote_out and now == current
    else:  # promoted first: gc sees it current and keeps it
        assert promote_out["value"] is True and now == version and version not in gc_out["value"]


def _init(store: str, data: str, failpoint: str = "") -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "continual_trainer",
            "init",
            "--store",
            store,
            "--data",
            data,
            "--label",
            "y",
            "--epochs",
            "2",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CTRAIN_FAILPOINT": failpoint},
    )


@pytest.mark.slow
def test_two_inits_on_one_path_one_wins_and_the_store_agrees_with_its_model(tmp_path: Path) -> None:
    """Before: the second init rewrote store.json while the first was about to promote; both
    reported success and the store's columns no longer fed its current model.

    The schedule forced: the first init is held right after writing store.json (the moment the
    second used to rewrite it, failpoint `init.after-store-json`), the second runs to its end,
    then the first is released. Without the init claim the second init succeeds too."""
    four = make_table(seed=0).drop_columns(["f4"])
    pq.write_table(four, tmp_path / "four.parquet")
    pq.write_table(make_table(seed=1), tmp_path / "five.parquet")
    pq.write_table(four.drop_columns(["y"]), tmp_path / "score4.parquet")
    store, gate = str(tmp_path / "store"), tmp_path / "gate"
    first = _init(store, str(tmp_path / "four.parquet"), f"init.after-store-json=wait:{gate}")
    _arrive(gate, timeout=120)
    second = _init(store, str(tmp_path / "five.parquet"))
    assert second.wait(120) == 2
    loser = second.stderr.read()
    assert "another init (pid" in loser and "Traceback" not in loser, loser
    gate.touch()
    assert first.wait(120) == 0, first.stderr.read()
    assert len(Store.open(store).schema.features) == 4
    from continual_trainer.scoring import predict

    out = predict(store, str(tmp_path / "score4.parquet"), str(tmp_path / "out.parquet"))
    assert out["rows"] == 120
    assert not os.path.exists(os.path.join(store, "init.claim"))


def test_an_init_claim_left_by_a_dead_init_is_taken_over(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (store / "init.claim").write_text(f'{{"pid": {dead.stdout.strip()}, "host": "{os.uname().nodename}", "time": 0}}')
    meta = StoreMeta(Schema(("a", "b"), "y", (0, 1)), "mlp:4")
    Store.create(str(store), meta).release_init()
    (store / "init.claim").write_text(f'{{"pid": {os.getppid()}, "host": "{os.uname().nodename}", "time": 9e9}}')
    with pytest.raises(UserError, match=rf"another init \(pid {os.getppid()} on"):
        Store.create(str(store), meta)
