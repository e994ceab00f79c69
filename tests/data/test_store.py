"""The store: batches kept unaltered, versions committed by their manifest, CAS promotion."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from continual_trainer.data.batches import ingest, load_rows
from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import Manifest
from continual_trainer.data.parquet import HOST, redact, table_to_bytes
from continual_trainer.data.sampling import holdout_mask, recency_weights
from continual_trainer.data.schema import Schema
from continual_trainer.data.storage import Store, StoreMeta
from tests.conftest import make_table

SCHEMA = Schema(tuple(f"f{i}" for i in range(5)), "y", (0, 1))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.create(str(tmp_path / "s"), StoreMeta(SCHEMA, "mlp:8"))


def test_ingest_keeps_bytes_and_is_idempotent(store: Store, write_parquet) -> None:
    path = write_parquet(make_table(seed=3))
    first = ingest(store, path)
    again = ingest(store, path)
    assert first.added and not again.added and again.batch_id == first.batch_id
    assert store.batch_ids() == [first.batch_id]
    assert store.read_batch(first.batch_id) == Path(path).read_bytes()
    second = ingest(store, write_parquet(make_table(seed=4), "b.parquet"))
    assert store.batch_ids() == [first.batch_id, second.batch_id]  # ingestion order


def test_rejected_input_is_quarantined_with_its_reason(store: Store, write_parquet) -> None:
    bad = make_table().set_column(0, "f0", pa.array(["a"] * 120))
    path = write_parquet(bad, "bad.parquet")
    with pytest.raises(UserError, match="feature 'f0' is string here; the store holds it as numeric"):
        ingest(store, path)
    assert store.batch_ids() == []
    ((name, data, reason),) = store.quarantined()
    assert name == "bad.parquet" and data == Path(path).read_bytes() and "holds it as numeric" in reason


def test_new_classes_need_consent_then_grow_the_store(store: Store, write_parquet) -> None:
    path = write_parquet(make_table(n_classes=3))
    with pytest.raises(UserError, match=r"label\(s\) 2 are not among.*--new-classes"):
        ingest(store, path)
    result = ingest(store, path, allow_new_classes=True)
    assert result.new_classes == (2,)
    assert Store.open(store.uri).schema.classes == (0, 1, 2)


def test_holdout_is_fixed_by_batch_and_disjoint(store: Store, write_parquet) -> None:
    a = holdout_mask("000001-abc", 100, 0.2)
    assert a.sum() == 20 and np.array_equal(a, holdout_mask("000001-abc", 100, 0.2))
    assert not np.array_equal(a, holdout_mask("000002-abc", 100, 0.2))
    ids = [ingest(store, write_parquet(make_table(seed=s), f"{s}.parquet")).batch_id for s in (1, 2)]
    train, hold = load_rows(store, ids)
    assert len(train) + len(hold) == 240 and len(hold) == 48
    assert set(train.order) == {0, 1}


def test_recency_weights_halve_per_half_life() -> None:
    w = recency_weights(np.array([0, 1, 2, 2]), half_life=1.0)
    assert w.mean() == pytest.approx(1.0)
    assert w[1] / w[0] == pytest.approx(2.0) and w[2] / w[1] == pytest.approx(2.0)


def _manifest(strategy: str = "x") -> Manifest:
    return Manifest(parent=None, strategy=strategy, weights=(1.0,))


def test_versions_exist_only_with_a_manifest_and_checksums_hold(store: Store) -> None:
    half = Path(store.uri, "models", "half-written")
    half.mkdir(parents=True)
    (half / "member-0.keras").write_bytes(b"partial")
    assert store.versions() == []
    manifest = store.write_version("v1", [(b"abc", 2)], _manifest())
    assert store.versions() == ["v1"] and manifest.files["member-0.keras"] and manifest.version == "v1"
    assert store.manifest("v1") == manifest  # one writer, one reader: what is written is what is read
    assert store.read_member("v1", "member-0.keras") == b"abc"
    Path(store.uri, "models", "v1", "member-0.keras").write_bytes(b"abd")
    with pytest.raises(UserError, match="fails its sha256 check"):
        store.read_member("v1", "member-0.keras")


def test_promotion_is_compare_and_swap(store: Store) -> None:
    for v in ("v1", "v2", "v3"):
        store.write_version(v, [(b"m", 2)], _manifest())
    assert store.promote("v1", None)
    assert store.promote("v2", "v1")
    assert not store.promote("v3", "v1")  # someone else moved CURRENT: we lose, nothing overwritten
    assert store.current() == "v2"


def test_a_lock_left_by_a_dead_process_is_broken(store: Store) -> None:
    dead = {"pid": 2**22 + 12345, "host": os.uname().nodename, "time": 0}
    Path(store.uri, "locks").mkdir()
    Path(store.uri, "locks", "CURRENT").write_text(json.dumps(dead))
    store.write_version("v1", [(b"m", 2)], _manifest())
    assert store.promote("v1", None)


def test_open_refuses_what_it_cannot_read(tmp_path: Path, store: Store) -> None:
    with pytest.raises(UserError, match="not a ctrain store"):
        Store.open(str(tmp_path / "nowhere"))
    meta_path = Path(store.uri, "store.json")
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(UserError, match="format version 99 is newer"):
        Store.open(store.uri)


def test_leftovers_of_dead_writers_are_removed_before_the_next_write_there(store: Store, write_parquet) -> None:
    batches = Path(store.uri, "batches")
    batches.mkdir(exist_ok=True)
    dead_pid = 2**22 + 4321
    leftovers = [batches / f".tmp-{HOST}-{dead_pid}-deadbeef", batches / f".tmp-{dead_pid}-cafe0000"]  # new, old names
    for p in leftovers:
        p.write_bytes(b"x")
    mine = batches / f".tmp-{HOST}-{os.getpid()}-cafe"
    mine.write_bytes(b"y")
    elsewhere = batches / ".tmp-otherhost-1-beef"  # another host's writer: cannot be checked, so kept
    elsewhere.write_bytes(b"z")
    dead_folder = batches / "000007-0123456789ab"
    dead_folder.mkdir()
    (dead_folder / ".claim").write_text(json.dumps({"host": HOST, "pid": dead_pid}))
    fresh_unclaimed = batches / "000008-0123456789ab"  # a writer between mkdir and its claim file
    fresh_unclaimed.mkdir()

    Store.open(store.uri)  # opening alone touches nothing
    assert all(p.exists() for p in [*leftovers, mine, elsewhere, dead_folder, fresh_unclaimed])
    ingest(store, write_parquet(make_table(seed=3)))  # a write into batches/ cleans batches/
    assert not any(p.exists() for p in [*leftovers, dead_folder])
    assert mine.exists() and elsewhere.exists() and fresh_unclaimed.exists()


def test_redact_hides_credentials() -> None:
    assert redact("s3://KEY:SECRET@bucket/prefix?endpoint_override=x") == "s3://bucket/prefix"
    assert redact("./local") == "./local"


def test_data_modules_import_neither_ray_nor_tensorflow() -> None:
    import subprocess

    code = (
        "import continual_trainer as ct, sys; ct.open_store; "
        "from continual_trainer.data import batches, storage; from continual_trainer import strategies; "
        "from continual_trainer import store_setup, updates, scoring, records, sweep, stream, demo, executor, cli; "
        "print('ray' in sys.modules, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_parquet_round_trip_bytes(tiny_table: pa.Table) -> None:
    from continual_trainer.data.parquet import table_from_bytes

    assert table_from_bytes(table_to_bytes(tiny_table), "x").equals(tiny_table)


def test_a_manifest_cannot_point_outside_its_version(store: Store) -> None:
    store.write_version("v1", [(b"m", 2)], _manifest())
    path = Path(store.uri, "models", "v1", "manifest.json")
    d = json.loads(path.read_text())
    d["members"][0]["file"] = d["files"]["../../store.json"] = "../../store.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"manifest.json is damaged \('\.\./\.\./store.json' is not a file name"):
        store.manifest("v1")
