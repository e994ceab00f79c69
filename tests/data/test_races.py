"""The store's life cycle under races: gc beside promotions, two inits on one path.

Each test runs many interleavings (random delays on both sides), not one schedule."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.commands import prune
from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import Manifest
from continual_trainer.data.schema import Schema
from continual_trainer.data.storage import Store, StoreMeta, VersionGone
from tests.conftest import make_table


def _version(store: Store, parent: str | None, n: int) -> str:
    version = store.new_version_id(f"v{n}")
    store.write_version(version, [(b"member bytes", 2)], Manifest(parent=parent, strategy="test", weights=(1.0,)))
    return version


def test_gc_beside_promotions_never_deletes_a_version_that_becomes_current(tmp_path: Path) -> None:
    """Before: gc listed a version as never promoted, an update promoted it, gc deleted it, and
    every later command failed on a damaged CURRENT."""
    uri = str(tmp_path / "store")
    store = Store.create(uri, StoreMeta(Schema(("a", "b"), "y", (0, 1)), "mlp:4"))
    store.release_init()
    first = _version(store, None, 0)
    assert store.promote(first, None)
    rng = random.Random(0)
    promoted = lost = 0
    for n in range(1, 41):
        current = store.current()
        version = _version(store, current, n)
        results: dict[str, object] = {}

        def promote(
            version: str = version, current: str | None = current, delay: float = rng.random() / 200, results=results
        ) -> None:
            threading.Event().wait(delay)
            try:
                results["promoted"] = Store.open(uri).promote(version, current)
            except VersionGone:
                results["promoted"] = False

        def gc(delay: float = rng.random() / 200, results=results) -> None:
            threading.Event().wait(delay)
            results["deleted"] = prune(uri, 0)

        threads = [threading.Thread(target=promote), threading.Thread(target=gc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        now = store.current()  # never "CURRENT is damaged"
        assert now in store.versions()
        if results["promoted"]:
            assert now == version and version not in results["deleted"]
            promoted += 1
        else:
            assert version in results["deleted"] and now == current
            lost += 1
    assert promoted and promoted + lost == 40


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
    reported success and the store's columns no longer fed its current model."""
    four = make_table(seed=0).drop_columns(["f4"])
    pq.write_table(four, tmp_path / "four.parquet")
    pq.write_table(make_table(seed=1), tmp_path / "five.parquet")
    pq.write_table(make_table(seed=2).drop_columns(["y"]), tmp_path / "score5.parquet")
    pq.write_table(four.drop_columns(["y"]), tmp_path / "score4.parquet")
    # Three start offsets, and one schedule made exact: the first init waits 15 s right after
    # writing store.json (the moment the second used to rewrite it) and the second starts then.
    for n, delay in enumerate((0.0, 0.3, 1.0, "paused")):
        store = str(tmp_path / f"s{n}")
        paused = delay == "paused"
        first = _init(store, str(tmp_path / "four.parquet"), "init.after-store-json=sleep:15" if paused else "")
        if paused:
            while not os.path.exists(os.path.join(store, "store.json")):
                threading.Event().wait(0.05)
        else:
            threading.Event().wait(delay)
        second = _init(store, str(tmp_path / "five.parquet"))
        codes = [first.wait(120), second.wait(120)]
        errors = [p.stderr.read() for p in (first, second)]
        assert sorted(codes) == [0, 2], (codes, errors)
        loser = errors[codes.index(2)]
        assert "another init" in loser or "already exists" in loser, loser
        if paused:
            assert codes == [0, 2] and "another init (pid" in loser, loser
        assert "Traceback" not in "".join(errors)
        width = len(Store.open(store).schema.features)
        from continual_trainer.commands import predict

        out = predict(store, str(tmp_path / f"score{width}.parquet"), str(tmp_path / f"out{n}.parquet"))
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
