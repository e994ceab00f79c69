"""A store written by the previous release (format 1, `tests/fixtures/store-v1`, made by commit
c7976e4 with `ctrain init --model mlp:8` and one ingested batch) works with this one as it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from continual_trainer.cli import main
from continual_trainer.data.storage import Store

FIXTURE = Path(__file__).parent.parent / "fixtures" / "store-v1"


def test_format_1_store_reads_updates_and_predicts(tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    before = json.loads((store / "store.json").read_text())
    assert before["format_version"] == 1 and "features" in before
    assert main(["history", "--store", str(store), "--json"]) == 0
    (only,) = json.loads(capsys.readouterr().out)["versions"]
    assert only["strategy"] == "init"

    # A new batch like the stored ones, for the updates to train on.
    (old,) = [p for p in sorted((store / "batches").glob("*/data.parquet"))][-1:]
    table = pq.read_table(old)
    rng = np.random.default_rng(0)
    for name in ("f0", "f1", "f2", "f3"):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.add(table[name], rng.normal(0, 0.1, table.num_rows)))
    pq.write_table(table, tmp_path / "new.parquet")
    assert main(["ingest", "--store", str(store), str(tmp_path / "new.parquet")]) == 0
    for strategy in ("finetune_all", "fresh_all", "ensemble_new", "graft", "new_head"):
        argv = ["update", "--store", str(store), "--strategy", strategy, "--set", "epochs=3", "--promote", "never"]
        assert main(argv) == 0, (strategy, capsys.readouterr().err)
    assert main(["update", "--store", str(store), "--strategy", "finetune_new", "--set", "epochs=3"]) == 0
    out = tmp_path / "scored.parquet"
    assert main(["predict", "--store", str(store), "--data", str(tmp_path / "new.parquet"), "--out", str(out)]) == 0
    assert pq.read_table(out).num_rows == table.num_rows
    assert json.loads((store / "store.json").read_text()) == before  # nothing rewrote the store's schema
    opened = Store.open(str(store))
    assert len(opened.versions()) == 7
