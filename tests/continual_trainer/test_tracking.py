"""MLflow mirrors updates, sweeps (nested runs) and stream events; the store stays the truth."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from continual_trainer.data.storage import Store
from tests.conftest import make_table

mlflow = pytest.importorskip("mlflow")  # the `mlflow` extra; `make test` installs it with `dev`


def sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A local tracking store and registry, as the README tells users to make one; artifacts go
    to ./mlruns as MLflow's default puts them, here under tmp_path."""
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def runs(uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_update_sweep_and_stream_are_logged_as_runs(tmp_path: Path, tiny_store: str, capsys, monkeypatch) -> None:
    uri = sqlite(tmp_path, monkeypatch)
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

    uri = sqlite(tmp_path, monkeypatch)
    store = ct.open_store(tiny_store, mlflow=uri)
    outcome = store.update("finetune_new", epochs=2, promote="never")
    store.sweep({"strategies": ["keep"]})
    names = {r.info.run_name for r in runs(uri, f"ctrain {tiny_store}")}
    assert outcome.version in names and any(n.startswith("sweep-") for n in names)


def test_the_registry_follows_promotions_and_rollbacks_with_the_alias_champion(
    tmp_path: Path, tiny_store: str, capsys, monkeypatch
) -> None:
    import numpy as np

    uri = sqlite(tmp_path, monkeypatch)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    # a store that was never mirrored: promoting its current version registers it as the champion
    assert main(["promote", "--store", tiny_store, "current", "--mlflow", uri, "--mlflow-model", "churn"]) == 0
    init = Store.open(tiny_store).current()
    assert client.get_model_version_by_alias("churn", "champion").tags["ctrain.version"] == init
    argv = ["update", "--store", tiny_store, "--strategy", "finetune_new", "--set", "epochs=2", "--json"]
    assert main([*argv, "--promote", "always", "--mlflow", uri, "--mlflow-model", "churn"]) == 0
    new = json.loads(capsys.readouterr().out.splitlines()[-1])["version"]
    champion = client.get_model_version_by_alias("churn", "champion")
    assert champion.tags["ctrain.version"] == new
    # the registered model is the version as `ctrain predict` scores it
    model = mlflow.keras.load_model("models:/churn@champion")
    import continual_trainer as ct

    rows = make_table(n=8, seed=3).drop(["y"]).to_pandas()
    expected = ct.open_store(tiny_store).predict(rows)["probability"].to_numpy()
    (name,) = ct.expected_inputs(tiny_store)  # one numeric input: the five columns side by side
    inputs = {name: rows[[f"f{i}" for i in range(5)]].to_numpy("float32")}
    assert np.allclose(np.asarray(model(inputs))[:, -1], expected, atol=1e-5)  # the probability of class 1
    # a rollback moves the alias back to what was current before (registered then, as never logged)
    back = ["rollback", "--store", tiny_store, "--mlflow", uri, "--mlflow-model", "churn", "--json"]
    assert main(back) == 0
    previous = json.loads(capsys.readouterr().out.splitlines()[-1])["version"]
    assert client.get_model_version_by_alias("churn", "champion").tags["ctrain.version"] == previous == init
    assert main(["promote", "--store", tiny_store, new[-4:], "--mlflow", uri, "--mlflow-model", "churn"]) == 0
    assert client.get_model_version_by_alias("churn", "champion").tags["ctrain.version"] == new
    assert len(client.search_model_versions("name='churn'")) == 2  # each version registered once


def test_the_file_store_is_refused_with_what_to_use(tiny_store: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    argv = ["update", "--store", tiny_store, "--strategy", "keep", "--mlflow", (tmp_path / "mlruns").as_uri()]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "use sqlite:///mlflow.db" in err and err.count("\n") == 1


def test_the_registry_never_goes_stale_once_a_store_has_mirrored(
    tmp_path: Path, tiny_store: str, capsys, caplog, monkeypatch
) -> None:
    """The first `--mlflow` is recorded in the store; later promotions, rollbacks and label's
    promotions mirror there without it (from any folder); an unreachable MLflow is a warning
    naming `ctrain mlflow sync`, which then puts the alias where CURRENT is."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "here" / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")

    def champion() -> str:
        return client.get_model_version_by_alias("churn", "champion").tags["ctrain.version"]

    assert main(["mlflow", "sync", "--store", tiny_store]) == 2  # never mirrored: says what to give
    assert "never mirrored to MLflow; give the tracking URI" in capsys.readouterr().err
    # the first mirror, with a relative SQLite path: recorded absolute
    assert main(["promote", "--store", tiny_store, "current", "--mlflow", "sqlite:///mlflow.db",
                 "--mlflow-model", "churn"]) == 0  # fmt: skip
    first = Store.open(tiny_store).current()
    assert Store.open(tiny_store).mirror() == (f"sqlite:///{db}", "churn")
    monkeypatch.chdir(tmp_path)  # another folder: the record, not the working folder, finds the database
    update = ["update", "--store", tiny_store, "--strategy", "finetune_new", "--set", "epochs=2", "--json"]
    assert main([*update, "--promote", "always"]) == 0
    new = json.loads(capsys.readouterr().out.splitlines()[-1])["version"]
    assert champion() == new
    assert main(["rollback", "--store", tiny_store]) == 0
    assert champion() == first == Store.open(tiny_store).current()
    # MLflow unreachable: the rollback is done, the alias is behind, the warning says how to repair
    Store.open(tiny_store).record_mirror("http://127.0.0.1:9", "churn")
    capsys.readouterr()
    caplog.clear()
    assert main(["rollback", "--store", tiny_store]) == 0
    assert f"`ctrain mlflow sync --store {tiny_store}` puts the alias champion where CURRENT is" in caplog.text
    assert "Traceback" not in capsys.readouterr().err
    assert Store.open(tiny_store).current() == new and champion() == first
    assert main(["mlflow", "sync", "--store", tiny_store]) == 2  # still unreachable: the command's own failure
    assert "cannot use this tracking store" in capsys.readouterr().err
    Store.open(tiny_store).record_mirror(f"sqlite:///{db}", "churn")
    assert main(["mlflow", "sync", "--store", tiny_store, "--json"]) == 0
    synced = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert synced["version"] == new == champion() and synced["model"] == "churn"
    assert main(["mlflow", "sync", "--store", tiny_store]) == 0
    assert f"churn@champion is model version {synced['model_version']}" in capsys.readouterr().out
