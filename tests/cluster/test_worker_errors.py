"""A user's mistake found on a Ray worker reaches the CLI as the same one line and exit 2, on every path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from continual_trainer.cluster.executor import RayExecutor
from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from continual_trainer.sweep import SweepSpec, run_sweep
from tests.conftest import make_table


def _one_line(capsys, argv: list[str], expected: str) -> None:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and expected in err and "Traceback" not in err, err
    assert json.loads(out.strip().splitlines()[-1])["exit_code"] == 2


@pytest.fixture
def three_class_store(tiny_store: str, write_parquet, capsys) -> str:
    """The tiny store after a batch with a third class: fine-tuning cannot learn it."""
    assert main(["ingest", "--store", tiny_store, "--new-classes", write_parquet(make_table(seed=7, n_classes=3))]) == 0
    capsys.readouterr()
    return tiny_store


@pytest.mark.ray
def test_update_on_actors(ray_cluster, three_class_store: str, capsys) -> None:
    argv = ["update", "--store", three_class_store, "--strategy", "finetune_all", "--actors", "2"]
    _one_line(capsys, [*argv, "--set", "epochs=2"], "fine-tuning cannot add outputs")


@pytest.mark.slow
@pytest.mark.ray
def test_stream_best_on_actors(ray_cluster, three_class_store: str, tmp_path: Path, capsys) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(seed=8, n_classes=3), inbox / "x.parquet")
    argv = ["stream", "--store", three_class_store, "--inbox", str(inbox), "--once", "--policy", "best"]
    _one_line(capsys, [*argv, "--candidates", "finetune_new,finetune_all", "--ray"], "fine-tuning cannot add outputs")
    (event,) = Store.open(three_class_store).stream_events()
    assert event["status"] == "failed" and "use one of" in event["reason"]


@pytest.mark.ray
def test_predict_on_actors(ray_cluster, tiny_store: str, tmp_path: Path, capsys) -> None:
    table = pa.concat_tables([make_table(seed=s) for s in range(3)]).drop_columns(["y"])
    f0 = np.where(np.arange(table.num_rows) == 300, np.nan, table.column("f0").to_numpy())
    path = tmp_path / "nan.parquet"
    pq.write_table(table.set_column(0, "f0", pa.array(f0)), path, row_group_size=50)
    argv = ["predict", "--store", tiny_store, "--data", str(path), "--out", str(tmp_path / "o.parquet")]
    _one_line(capsys, [*argv, "--actors", "2"], "'f0' has 1 NaN")


@pytest.mark.slow
@pytest.mark.ray
def test_sweep_on_tune(ray_cluster, tiny_store: str) -> None:
    spec = SweepSpec.parse("strategies: [{graft: {freeze: 9, epochs: 2}}]\nseeds: [0, 1]\nmax_failures: 3")
    with pytest.raises(UserError, match=r"none of 2 trials finished.*only 2 hidden layers"):
        run_sweep(Store.open(tiny_store), RayExecutor(), spec)
