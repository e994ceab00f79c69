"""Updates above the memory budget: strategies that can train on rows read from the store a
chunk at a time do, the others say so in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import continual_trainer as ct
from continual_trainer.data.errors import UserError
from continual_trainer.strategies import base
from continual_trainer.trainer.cli import main
from tests.conftest import make_table


@pytest.fixture
def stores(tmp_path: Path) -> tuple[str, str]:
    """Two copies of a store with a first batch and two new ones (row groups of 100 rows)."""
    paths = []
    for i, n in enumerate((600, 800, 800)):
        path = tmp_path / f"b{i}.parquet"
        pq.write_table(make_table(n=n, seed=i), path, row_group_size=100)
        paths.append(str(path))
    uris = []
    for name in ("a", "b"):
        uri = str(tmp_path / name)
        assert main(["init", "--store", uri, "--data", paths[0], "--label", "y", "--epochs", "5"]) == 0
        assert main(["ingest", "--store", uri, *paths[1:]]) == 0
        uris.append(uri)
    return uris[0], uris[1]


def _update(uri: str, capsys, *extra: str) -> dict:
    capsys.readouterr()
    argv = ["update", "--store", uri, "--strategy", "finetune_all", "--set", "epochs=10", "--json", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_an_update_over_the_budget_trains_from_the_store_as_well(stores, capsys, monkeypatch) -> None:
    in_memory = _update(stores[0], capsys)
    monkeypatch.setattr(base, "train", lambda *a, **k: pytest.fail("the rows were trained in memory"))
    pieces = _update(stores[1], capsys, "--memory-budget", "1KB", "--promote", "never")
    a, b = in_memory["metrics"]["holdout_accuracy"], pieces["metrics"]["holdout_accuracy"]
    assert b > 0.75 and abs(a - b) < 0.03, (a, b)
    # Recency weighting reads the same way; importance weighting needs every old row at once.
    ct.open_store(stores[1]).update("fresh_all", memory_budget="1KB", epochs=3, weighting="recency", promote="never")
    with pytest.raises(UserError, match=r"weighting=importance .* --memory-budget"):
        ct.open_store(stores[1]).update("finetune_all", memory_budget=1000, weighting="importance", promote="never")


def test_an_update_that_cannot_read_in_pieces_says_so(stores, capsys) -> None:
    capsys.readouterr()
    argv = ["update", "--store", stores[0], "--strategy", "graft", "--memory-budget", "1KB"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "over --memory-budget" in err and "finetune_all" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:
        main(["update", "--store", stores[0], "--strategy", "finetune_all", "--memory-budget", "lots"])
    assert exit_.value.code == 2
    assert "not a size" in capsys.readouterr().err
    with pytest.raises(UserError, match="memory_budget"):
        ct.open_store(stores[0]).update("finetune_all", memory_budget="-1GB")
