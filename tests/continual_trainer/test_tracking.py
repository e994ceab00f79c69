"""MLflow mirrors updates, sweeps (nested runs) and stream events; the store stays the truth."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from tests.conftest import make_table

mlflow = pytest.importorskip("mlflow")  # the `mlflow` extra; `make test` installs it with `dev`


def runs(uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_update_sweep_and_stream_are_logged_as_runs(tmp_path: Path, tiny_store: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's local file-based tracking store
    uri = (tmp_path / "mlruns").as_uri()
    experiment = f"ctrain {tiny_store}"
    argv = ["update", "--store", tiny_store, "--strategy", "finetune_new", "--set", "epochs=2", "--json"]
    assert main([*argv, "--mlflow", uri]) == 0
    version = json.loads(capsys.readouterr().out.splitlines()[-1])["version"]
    (run,) = runs(uri, experiment)
    assert run.info.run_name == version and run.data.tags["ctrain.version"] == version
    assert run.data.params["strategy"] == "finetune_new" and run.data.params["epochs"] == "2"
    assert 0 <= run.data.metrics["holdout_accuracy"] <= 1

    pq.write_table(make_table(seed=5, shift=0.4), tmp_path / "b.parquet")
    assert main(["ingest", "--store", tiny_store, str(tmp_path / "b.parquet")]) == 0
    (tmp_path / "s.yaml").write_text("strategies: [keep, finetune_new]\nparams: {epochs: 2}\n")
    sweep = ["sweep", "--store", tiny_store, "--config", str(tmp_path / "s.yaml"), "--local", "--promote", "best"]
    assert main([*sweep, "--mlflow", uri, "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    by_name = {r.info.run_name: r for r in runs(uri, experiment)}
    parent = by_name[out["sweep"]]
    nested = [r for r in by_name.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(nested) == 3  # two trials and the saved winner
    assert by_name[out["winner"]["version"]].data.tags["ctrain.command"] == "sweep --promote best"

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(seed=6, shift=0.5), inbox / "f.parquet")
    stream = ["stream", "--store", tiny_store, "--inbox", str(inbox), "--once", "--policy", "finetune_new"]
    assert main([*stream, "--set", "epochs=2", "--local", "--mlflow", uri]) == 0
    assert any(r.data.tags.get("ctrain.command") == "stream" for r in runs(uri, experiment))


def test_a_bad_tracking_uri_is_one_line_and_exit_2(tiny_store: str, capsys) -> None:
    argv = ["update", "--store", tiny_store, "--strategy", "keep", "--mlflow", "nosuchscheme://x"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("ctrain: error: --mlflow nosuchscheme://x: cannot use this tracking store")
        and err.count("\n") == 1
    )


def test_the_python_api_mirrors_updates_and_sweeps(tmp_path: Path, tiny_store: str, monkeypatch) -> None:
    import continual_trainer as ct

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    store = ct.open_store(tiny_store, mlflow=uri)
    outcome = store.update("finetune_new", epochs=2, promote="never")
    store.sweep({"strategies": ["keep"]})
    names = {r.info.run_name for r in runs(uri, f"ctrain {tiny_store}")}
    assert outcome.version in names and any(n.startswith("sweep-") for n in names)
