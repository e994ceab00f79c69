"""Sharded scoring: actors read their own row groups; results equal one process's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from continual_trainer.cluster.sharded import ScorerPool
from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from continual_trainer.trainer.evaluate import score
from continual_trainer.versions import load_candidate
from tests.conftest import make_table


@pytest.mark.ray
def test_sharded_scores_equal_local_scores_in_order(ray_cluster, tiny_store: str, tmp_path: Path) -> None:
    store = Store.open(tiny_store)
    version = store.current()
    table = pa.concat_tables([make_table(seed=s) for s in range(5)])
    path = tmp_path / "big.parquet"
    pq.write_table(table, path, row_group_size=70)  # 600 rows: 9 row groups over 2 actors
    pool = ScorerPool.start(store, version, 2)
    try:
        proba, labels = pool.score(str(path), with_labels=True)
        x = store.schema.features_matrix(table)
        np.testing.assert_allclose(proba, load_candidate(store, version).predict_proba(x, 2), atol=1e-6)
        np.testing.assert_array_equal(labels, table.column("y").to_numpy())
        exact = score(proba, labels)
        sharded = pool.evaluate(str(path))
        for metric in ("accuracy", "log_loss", "roc_auc", "rows"):
            assert sharded[metric] == pytest.approx(exact[metric], rel=1e-5), metric
        bad = table.set_column(0, "f0", pa.array(np.where(np.arange(600) == 500, np.nan, 0.0)))
        pq.write_table(bad, tmp_path / "bad.parquet", row_group_size=70)
        with pytest.raises(UserError, match="'f0' has 1 NaN"):
            pool.score(str(tmp_path / "bad.parquet"))
    finally:
        pool.stop()


@pytest.mark.ray
def test_predict_on_actors_matches_local_predict(ray_cluster, tiny_store: str, tmp_path: Path, capsys) -> None:
    src = tmp_path / "score.parquet"
    pq.write_table(make_table(seed=9).drop_columns(["y"]), src, row_group_size=25)
    assert main(["predict", "--store", tiny_store, "--data", str(src), "--out", str(tmp_path / "a.parquet")]) == 0
    assert (
        main(
            [
                "predict",
                "--store",
                tiny_store,
                "--data",
                str(src),
                "--out",
                str(tmp_path / "b.parquet"),
                "--actors",
                "2",
            ]
        )
        == 0
    )
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert a.column("prediction").equals(b.column("prediction"))
    np.testing.assert_allclose(a.column("probability").to_numpy(), b.column("probability").to_numpy(), atol=1e-6)
