"""Everyday use: the columns users have, registry verbs, honest results, progress, one import name."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import continual_trainer as ct
from continual_trainer.cli import main
from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from continual_trainer.trainer.progress import Reporter, report, reporting
from tests.conftest import make_table

ROOT = Path(__file__).parents[2]


def run(capsys, *argv: str, code: int = 0) -> dict:
    got = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert got == code, err
    return json.loads(out.strip().splitlines()[-1])


def breast_cancer(tmp_path: Path) -> dict[str, Path]:
    """scikit-learn's breast-cancer data as a user has it: an id, a free-text note, unscaled
    measurements with their real names, a string label; in three files."""
    from sklearn.datasets import load_breast_cancer

    df = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "diagnosis"})
    df["diagnosis"] = np.where(df["diagnosis"] == 1, "benign", "malignant")
    df.insert(0, "patient_id", [f"P{i:05d}" for i in range(len(df))])
    df["note"] = np.random.default_rng(0).choice(["", "follow-up", "second opinion"], size=len(df))
    df = df.sample(frac=1, random_state=0)
    paths = {name: tmp_path / f"{name}.parquet" for name in ("old", "new", "score")}
    df.iloc[:250].to_parquet(paths["old"], index=False)
    df.iloc[250:450].drop(columns=["note"]).to_parquet(paths["new"], index=False)  # a batch without the note
    df.iloc[450:].drop(columns=["diagnosis"]).to_parquet(paths["score"], index=False)
    return paths


def test_the_breast_cancer_journey_keeps_id_and_note_columns(tmp_path: Path, capsys) -> None:
    files = breast_cancer(tmp_path)
    store = str(tmp_path / "store")
    init = ["init", "--store", store, "--data", str(files["old"]), "--label", "diagnosis", "--epochs", "40"]
    err = run(capsys, *init, code=2)["error"]
    assert "'patient_id' has a different value in every row" in err and "--ignore patient_id" in err
    assert not os.path.exists(store)

    first = run(capsys, *init, "--ignore", "patient_id,no*")
    assert first["metrics"]["holdout_accuracy"] > 0.9 and first["warnings"] == []
    assert first["metrics"]["holdout_majority"] < first["metrics"]["holdout_accuracy"]
    schema = Store.open(store).schema
    assert "patient_id" not in schema.features and "note" not in schema.features and len(schema.features) == 30
    assert schema.ignore == ("patient_id", "no*")

    assert run(capsys, "ingest", "--store", store, str(files["new"]))["batches"][0]["added"]
    stored = Store.open(store)
    assert stored.read_batch(stored.batch_ids()[0]) == files["old"].read_bytes()  # kept byte for byte
    out = tmp_path / "scored.parquet"
    run(capsys, "predict", "--store", store, "--data", str(files["score"]), "--out", str(out))
    scored = pq.read_table(out)
    assert scored.column("patient_id").to_pylist() == pq.read_table(files["score"]).column("patient_id").to_pylist()
    assert {"note", "prediction", "probability"} <= set(scored.column_names)

    # A column nobody declared is still refused (a renamed feature must not vanish silently).
    renamed = pq.read_table(files["new"]).rename_columns(
        [("radius" if c == "mean radius" else c) for c in pq.read_table(files["new"]).column_names]
    )
    pq.write_table(renamed, tmp_path / "renamed.parquet")
    err = run(capsys, "ingest", "--store", store, str(tmp_path / "renamed.parquet"), code=2)["error"]
    assert "missing feature column(s) mean radius" in err


def test_features_by_pattern_keep_every_other_column(tmp_path: Path, capsys) -> None:
    files = breast_cancer(tmp_path)
    store = str(tmp_path / "store")
    run(
        capsys,
        *("init", "--store", store, "--data", str(files["old"]), "--label", "diagnosis"),
        *("--features", "mean *", "--epochs", "5"),
    )
    assert len(Store.open(store).schema.features) == 10
    table = pq.read_table(files["new"])
    pq.write_table(table.append_column("added_later", pa.array(["x"] * table.num_rows)), tmp_path / "more.parquet")
    assert run(capsys, "ingest", "--store", store, str(tmp_path / "more.parquet"))["batches"][0]["added"]
    err = run(capsys, "init", "--store", str(tmp_path / "s2"), "--data", str(files["old"]), "--label", "diagnosis",
              "--features", "nothing*", code=2)["error"]  # fmt: skip
    assert "--features nothing*: no column" in err


def test_a_dataframes_index_written_by_pandas_is_never_a_feature(tmp_path: Path, capsys) -> None:
    """`df.sample(...).to_parquet(f)` writes the shuffled index as `__index_level_0__`."""
    frame = make_table(n=200).to_pandas().sample(frac=1.0, random_state=0)
    frame.iloc[:120].to_parquet(tmp_path / "a.parquet")
    assert "__index_level_0__" in pq.read_table(tmp_path / "a.parquet").column_names
    store = ct.init_store(str(tmp_path / "store"), str(tmp_path / "a.parquet"), "y", epochs=3)
    assert "__index_level_0__" not in store.schema.features and len(store.schema.features) == 5
    store.ingest(frame.iloc[120:])  # a DataFrame (no index column), then a file with one
    frame.iloc[160:].assign(y=1 - frame.y.iloc[160:]).to_parquet(tmp_path / "b.parquet")
    store.ingest(str(tmp_path / "b.parquet"))
    scored = store.predict(str(tmp_path / "b.parquet"))
    assert {"prediction", "__index_level_0__"} <= set(scored.column_names) and scored.num_rows == 40


def _store_with_versions(tmp_path: Path, capsys) -> tuple[str, list[str]]:
    store = str(tmp_path / "store")
    for i in range(3):
        pq.write_table(make_table(seed=i, shift=0.2 * i), tmp_path / f"b{i}.parquet")
    versions = [run(capsys, "init", "--store", store, "--data", str(tmp_path / "b0.parquet"), "--label", "y",
                    "--epochs", "3")["version"]]  # fmt: skip
    for i in (1, 2):
        run(capsys, "ingest", "--store", store, str(tmp_path / f"b{i}.parquet"))
        for strategy, promote in (("fresh_new", "never"), ("finetune_all", "always")):
            argv = ["update", "--store", store, "--strategy", strategy, "--set", "epochs=2", "--promote", promote]
            versions.append(run(capsys, *argv)["version"])
    return store, versions


def test_rollback_of_the_first_current_version_says_there_is_nothing_to_undo(tiny_store: str, capsys) -> None:
    err = run(capsys, "rollback", "--store", tiny_store, code=2)["error"]
    assert "was the store's first current version; nothing to undo" in err


def test_promote_rollback_and_version_references(tmp_path: Path, capsys) -> None:
    store, (init, fresh1, tune1, fresh2, tune2) = _store_with_versions(tmp_path, capsys)
    assert Store.open(store).current() == tune2
    assert run(capsys, "rollback", "--store", store) == {"version": tune1, "previous": tune2}  # undo the update
    # a second rollback undoes the first (kubectl rollout undo), not one more step up the lineage
    assert run(capsys, "rollback", "--store", store, "--reason", "bad week") == {"version": tune2, "previous": tune1}
    assert run(capsys, "promote", "--store", store, fresh2[-4:])["version"] == fresh2  # a unique suffix
    assert run(capsys, "promote", "--store", store, "parent")["version"] == tune1  # fresh2's parent
    assert run(capsys, "promote", "--store", store, "current")["version"] == tune1
    err = run(capsys, "promote", "--store", store, fresh2[:9], code=2)["error"]  # the date: 5 versions
    assert "names 5 versions" in err
    assert "no model version" in run(capsys, "promote", "--store", store, "zzzz", code=2)["error"]
    typo = tune2[-4:-1] + ("0" if tune2[-1] != "0" else "1")  # the last character mistyped
    if all(not v.endswith(typo) for v in (init, fresh1, tune1, fresh2, tune2)):
        assert f"did you mean {tune2}" in run(capsys, "promote", "--store", store, typo, code=2)["error"]
    events = Store.open(store).events("promote")
    assert [e["by"] for e in events] == ["init", "update", "update", "rollback", "rollback", "promote", "promote"]
    assert events[4]["reason"] == "bad week" and events[4]["previous"] == tune1
    # after `promote` of any version, rollback goes back to what was current before it
    assert run(capsys, "promote", "--store", store, init)["version"] == init
    assert run(capsys, "rollback", "--store", store) == {"version": tune1, "previous": init}
    assert run(capsys, "rollback", "--store", store, "--to", "parent") == {"version": init, "previous": tune1}

    out = tmp_path / "p.parquet"
    pq.write_table(pq.read_table(tmp_path / "b2.parquet").drop_columns(["y"]), tmp_path / "score.parquet")
    got = run(capsys, "predict", "--store", store, "--data", str(tmp_path / "score.parquet"), "--out", str(out),
              "--version", fresh1[-4:])  # fmt: skip
    assert got["version"] == fresh1


def test_gc_keeps_the_lineage_and_promoted_versions(tmp_path: Path, capsys) -> None:
    store, (init, fresh1, tune1, fresh2, tune2) = _store_with_versions(tmp_path, capsys)
    run(capsys, "promote", "--store", store, fresh1)
    run(capsys, "promote", "--store", store, tune2)
    dry = run(capsys, "gc", "--store", store, "--keep", "0", "--dry-run")
    assert dry["deleted"] == [fresh2] and Store.open(store).versions() == sorted([init, fresh1, tune1, fresh2, tune2])
    assert run(capsys, "gc", "--store", store, "--keep", "1")["deleted"] == []
    assert run(capsys, "gc", "--store", store, "--keep", "0")["deleted"] == [fresh2]
    assert fresh2 not in Store.open(store).versions()
    assert len(run(capsys, "history", "--store", store)["versions"]) == 4
    assert Store.open(store).events("delete")[0]["version"] == fresh2


def test_history_is_honest_about_rows_params_and_promotion(tmp_path: Path, capsys) -> None:
    store, (init, fresh1, tune1, fresh2, tune2) = _store_with_versions(tmp_path, capsys)
    rows = {r["version"]: r for r in run(capsys, "history", "--store", store)["versions"]}
    assert [rows[v]["promoted"] for v in (init, fresh1, tune1, fresh2, tune2)] == [True, False, True, False, True]
    assert rows[tune2]["same_holdout"] and rows[fresh2]["same_holdout"] and not rows[tune1]["same_holdout"]
    assert rows[init]["holdout_rows"] < rows[tune1]["holdout_rows"] < rows[tune2]["holdout_rows"]
    assert rows[tune2]["params"] == "epochs=2"
    assert "roc_auc" in json.dumps(rows[tune2]["metrics"])
    assert main(["history", "--store", store]) == 0
    text = capsys.readouterr().out
    assert "†" in text and "promoted" in text and "acc" in text
    assert main(["history", "--store", store, "--wide"]) == 0
    assert "auc" in capsys.readouterr().out


def test_a_model_that_learned_nothing_is_called_out(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    n = 200
    table = pa.table({"a": np.ones(n), "b": np.full(n, 3.0), "y": (rng.random(n) < 0.4).astype(np.int64)})
    pq.write_table(table, tmp_path / "flat.parquet")
    argv = ["init", "--store", str(tmp_path / "s"), "--data", str(tmp_path / "flat.parquet"), "--label", "y"]
    assert main([*argv, "--epochs", "5"]) == 0
    out = capsys.readouterr().out
    assert "majority class" in out and "warning: this model may have learned nothing" in out
    assert "predicts the same class for every holdout row" in out


def test_sweep_promote_best_saves_the_winner_as_a_version(tmp_path: Path, capsys) -> None:
    store, _ = _store_with_versions(tmp_path, capsys)
    pq.write_table(make_table(seed=9, shift=0.8), tmp_path / "b9.parquet")
    run(capsys, "ingest", "--store", store, str(tmp_path / "b9.parquet"))
    (tmp_path / "sweep.yaml").write_text("strategies: [keep, finetune_all, fresh_all]\nparams: {epochs: 3}\n")
    out = run(
        capsys, "sweep", "--store", store, "--config", str(tmp_path / "sweep.yaml"), "--local", "--promote", "best"
    )
    winner = out["winner"]
    manifest = Store.open(store).manifest(winner["version"])
    assert manifest.origin["sweep"] == out["sweep"] and manifest.origin["trial"].startswith(winner["strategy"])
    assert winner["strategy"] != "keep" and winner["promoted"], winner  # the batch moved by 0.8: keep is beaten
    assert Store.open(store).events("promote")[-1]["by"] == "sweep"


def test_the_python_api(tmp_path: Path) -> None:
    import continual_trainer as ct

    files = breast_cancer(tmp_path)
    old = pd.read_parquet(files["old"])
    store = ct.init_store(str(tmp_path / "store"), old, "diagnosis", ignore=["patient_id", "note"], epochs=30)
    assert store.current == store.last_outcome.version and store.last_outcome.promoted
    new = pd.read_parquet(files["new"])
    (added,) = store.ingest(new)
    assert added.added and not store.ingest(new)[0].added  # the same rows again: a no-op
    with pytest.raises(ct.UserError, match="unknown strategy"):
        store.update("finetune_everything")
    outcome = store.update("finetune_all", epochs=10, learning_rate=0.001, promote="always")
    assert outcome.strategy == "finetune_all" and outcome.version == store.resolve("current")
    scored = store.predict(pd.read_parquet(files["score"]))
    assert isinstance(scored, pd.DataFrame) and {"patient_id", "prediction"} <= set(scored.columns)
    assert isinstance(store.predict(str(files["score"]), version="parent"), pa.Table)
    history = store.history()
    assert list(history["strategy"]) == ["init", "finetune_all"] and "holdout_accuracy" in history.columns
    assert store.rollback() == history["version"][0] and store.promote(outcome.version[-4:]) == outcome.version
    store.ingest(pa.Table.from_pandas(new.assign(**{"mean radius": new["mean radius"] * 1.01}), preserve_index=False))
    result = store.sweep({"strategies": ["keep", "fresh_all"], "params": {"epochs": 3}}, promote_best=True)
    assert result.finished == 2 and store.last_outcome.strategy in ("keep", "fresh_all")
    assert store.gc(keep=0, dry_run=True) == [
        v for v in [store.last_outcome.version] if not store.last_outcome.promoted
    ]
    with pytest.raises(ct.UserError, match="not a ctrain store"):
        ct.open_store(str(tmp_path / "nowhere"))


def test_one_import_name_and_no_generic_modules(tmp_path: Path) -> None:
    import importlib.metadata as md

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert all(p.split(".")[0] == "continual_trainer" for p in project["tool"]["setuptools"]["packages"])
    top = md.distribution("continual-trainer").read_text("top_level.txt")
    assert top is None or top.split() == ["continual_trainer"]
    # A user's own `data` package beside their notebook is theirs, and ours still works.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("MINE = True\n")
    code = (
        "import data, continual_trainer as ct; from continual_trainer.data.storage import Store; "
        "assert data.MINE and ct.open_store and Store; import sys; "
        "assert not any(m.split('.')[0] in ('trainer', 'strategies', 'cluster') for m in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, env=env)


@pytest.mark.slow
def test_keras_is_imported_without_scikit_learn_and_matplotlib_which_still_import_after() -> None:
    """Keras's scikit-learn wrappers import scikit-learn (1.4 s of every training command's
    start here) and a plotting helper matplotlib's pyplot (0.4 s); ctrain never uses them, so
    Keras is imported without them (by the CLI and by every Ray worker, `pin_threads`)."""
    code = (
        "import sys; from continual_trainer.trainer.progress import import_keras_quietly; import_keras_quietly(); "
        "assert 'keras' in sys.modules, 'no keras'; "
        "assert 'sklearn' not in sys.modules and 'matplotlib' not in sys.modules, 'imported'; "
        "import sklearn.metrics; print(sklearn.metrics.accuracy_score([1, 0], [1, 1])); "
        "from continual_trainer.plots import png; import matplotlib.pyplot as plt; "
        "f = plt.figure(); print(png(f)[:4] == b'\\x89PNG')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["0.5", "True"], done.stderr[-500:]


def test_progress_is_a_bar_on_a_terminal_and_status_lines_otherwise() -> None:
    lines = io.StringIO()
    with reporting(Reporter("update", stream=lines, tty=False, interval=0)):
        for done in (10, 20):
            report("epochs", done, 20, f"loss {1 / done:.3f}")
    assert lines.getvalue().splitlines() == [
        "ctrain: update: epochs 10/20; loss 0.100 (0 s)",
        "ctrain: update: epochs 20/20; loss 0.050 (0 s)",
    ]
    quiet = io.StringIO()
    with reporting(Reporter("update", stream=quiet, tty=False, interval=3600)):
        report("epochs", 1, 2)
    assert quiet.getvalue() == ""
    bar = io.StringIO()
    with reporting(Reporter("sweep", stream=bar, tty=True)):
        report("trials", 3, 8, "best keep accuracy 0.900")
    assert "trials" in bar.getvalue() and "3/8" in bar.getvalue() and "best keep" in bar.getvalue()
    report("epochs", 1, 2)  # no reporter open: nothing happens


@pytest.mark.slow
def test_long_commands_report_progress_on_stderr_and_quiet_silences_it(tmp_path: Path) -> None:
    pq.write_table(make_table(seed=0), tmp_path / "old.parquet")
    cmd = [sys.executable, "-m", "continual_trainer", "init", "--store", str(tmp_path / "s"), "--data",
           str(tmp_path / "old.parquet"), "--label", "y", "--epochs", "300"]  # fmt: skip
    env = {**os.environ, "CTRAIN_STATUS_SECONDS": "0"}
    loud = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert loud.returncode == 0, loud.stderr
    assert "ctrain: init: epochs" in loud.stderr and "/300" in loud.stderr
    quiet = subprocess.run(
        [*cmd[:5], str(tmp_path / "q"), *cmd[6:], "--quiet"], capture_output=True, text=True, env=env, timeout=300
    )
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_checkout_runs_its_own_code_from_its_folder(tmp_path: Path) -> None:
    """Run in the checkout (as Ray's workers of a command started there are: Ray puts the
    driver's working directory first on their path), the package and its subpackages are
    the checkout's files, not an installed copy."""
    import shutil

    for name in ("continual_trainer", "data", "trainer", "strategies", "cluster"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    code = (
        "import continual_trainer.data.storage as s, continual_trainer.cli as c; print(s.__file__); print(c.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert all(line.startswith(str(tmp_path)) for line in out.stdout.split()), out.stdout
    version = subprocess.run(
        [sys.executable, "-m", "continual_trainer", "--version"], cwd=tmp_path, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("ctrain ")


def test_the_package_as_one_folder_runs_from_there(tmp_path: Path) -> None:
    """What a Ray job's runtime environment ships (`make ray-package`, `py_modules`): the
    project built as one folder, every layer inside it, run from there, not from an install."""
    package = tmp_path / "ray-package"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(package), str(ROOT)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(package)}
    code = "import continual_trainer.cluster.pool as p, continual_trainer.cli as c; print(p.__file__, c.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert all(line.startswith(str(package)) for line in out.stdout.split()), out.stdout
    assert (package / "continual_trainer" / "py.typed").is_file()
    version = subprocess.run(
        [sys.executable, "-m", "continual_trainer", "--version"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("ctrain "), version.stderr


def test_the_python_api_reports_progress_when_asked(tiny_store: str, capsys, monkeypatch) -> None:
    import continual_trainer as ct

    monkeypatch.setenv("CTRAIN_STATUS_SECONDS", "0")
    ct.open_store(tiny_store).update("finetune_new", epochs=3, promote="never")
    assert capsys.readouterr().err == ""  # not asked: silent, like any library
    ct.open_store(tiny_store, progress=True).update("finetune_new", epochs=3, promote="never")
    assert "ctrain: update: finetune_new: epochs 3/3" in capsys.readouterr().err


def test_promoting_a_version_that_scores_below_the_one_it_replaces_warns(tiny_store: str, capsys, caplog) -> None:
    from continual_trainer.api import open_store

    store = open_store(tiny_store)
    weak = store.update("fresh_new", epochs=1, learning_rate=1e-6, promote="never").version  # learns ~nothing
    strong = store.update("finetune_all", epochs=20, promote="never").version
    accuracy = {h["version"]: h["metrics"]["holdout_accuracy"] for h in store.versions()}
    assert accuracy[strong] > accuracy[weak]
    run(capsys, "promote", "--store", tiny_store, strong)
    assert "worse than" not in caplog.text  # the CLI prints warnings on stderr as `ctrain: WARNING: ...`
    assert run(capsys, "promote", "--store", tiny_store, weak)["version"] == weak
    err = caplog.text
    assert f"{weak} scores holdout accuracy {accuracy[weak]:.4f}, worse than {accuracy[strong]:.4f}" in err


def test_predict_into_another_column_when_the_input_has_predictions_already(
    tiny_store: str, tmp_path: Path, capsys
) -> None:
    rows = tmp_path / "rows.parquet"
    pq.write_table(make_table(n=20, seed=4).drop(["y"]), rows)
    first, second = tmp_path / "first.parquet", tmp_path / "second.parquet"
    run(capsys, "predict", "--store", tiny_store, "--data", str(rows), "--out", str(first))
    err = run(capsys, "predict", "--store", tiny_store, "--data", str(first), "--out", str(second), code=2)["error"]
    assert "already has a column 'prediction'" in err and "--prediction-column" in err
    argv = ["predict", "--store", tiny_store, "--data", str(first), "--out", str(second)]
    assert run(capsys, *argv, "--prediction-column", "again")["rows"] == 20
    out = pq.read_table(second)
    assert out.column_names[-4:] == ["prediction", "probability", "again", "again_probability"]
    assert out.column("again").to_pylist() == out.column("prediction").to_pylist()  # the same version
    assert "is a feature column" in run(capsys, *argv, "--prediction-column", "f0", code=2)["error"]
    from continual_trainer.api import open_store

    frame = open_store(tiny_store).predict(out.to_pandas(), prediction_column="third")
    assert list(frame.columns[-2:]) == ["third", "third_probability"]


def test_a_stream_with_an_archive_moves_processed_files_out_of_the_inbox(tiny_store: str, tmp_path: Path) -> None:
    from continual_trainer.api import open_store

    inbox, archive = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    pq.write_table(make_table(seed=5, shift=0.3), inbox / "a.parquet")
    (inbox / "b.parquet").write_bytes(b"not parquet")
    store = open_store(tiny_store)
    # What to do with each file as one value (keywords replace its fields; other keywords are
    # strategy parameters, and one no strategy of the policy has is refused before any file).
    options = ct.StreamOptions(policy="fresh_all", trigger="always", archive=str(archive))
    with pytest.raises(UserError, match="no_such"):
        store.stream(str(inbox), options, no_such=1)
    events = store.stream(str(inbox), options, policy="finetune_new", epochs=1)
    assert [e["status"] for e in events] in (["updated", "rejected"], ["kept", "rejected"])
    assert [c["strategy"] for c in events[0]["candidates"]] == ["finetune_new"] and options.policy == "fresh_all"
    assert sorted(os.listdir(inbox)) == [] and sorted(os.listdir(archive)) == ["a.parquet", "b.parquet"]
    pq.write_table(make_table(seed=5, shift=0.3), inbox / "a.parquet")  # the same bytes again: done before
    assert store.stream(str(inbox), policy="finetune_new", archive=str(archive)) == []
    assert os.listdir(inbox) == [] and len(os.listdir(archive)) == 2  # the same bytes: in the archive once
    pq.write_table(make_table(seed=6, shift=0.3), inbox / "a.parquet")  # other bytes under the same name
    assert len(store.stream(str(inbox), policy="finetune_new", archive=str(archive))) == 1
    assert os.listdir(inbox) == [] and len(os.listdir(archive)) == 3  # kept beside the first, its sha256 added
    with pytest.raises(UserError, match="inside the store"):
        store.stream(str(inbox), archive=os.path.join(tiny_store, "archive"))


def test_update_with_several_strategies_keeps_each_and_promotes_the_best(tiny_store: str, capsys) -> None:
    from continual_trainer.api import open_store

    before = Store.open(tiny_store).current()
    argv = ["update", "--store", tiny_store, "--strategy", "finetune_new,fresh_new", "--set", "epochs=3"]
    kept = run(capsys, *argv, "--promote", "never")
    assert [v["strategy"] for v in kept["versions"]] == ["finetune_new", "fresh_new"]
    assert kept["promoted"] is False and Store.open(tiny_store).current() == before
    fresh_first = ["update", "--store", tiny_store, "--strategy", "fresh_new,keep", "--set", "epochs=1"]
    assert main([*fresh_first, "--promote", "never"]) == 0
    out = capsys.readouterr().out
    assert "fresh_new" in out and "keep" in out and "every strategy is kept as a version" in out
    table = [line.split() for line in out.splitlines() if line.startswith(("  fresh_new", "  keep"))]
    best = max(table, key=lambda row: (float(row[2]), -float(row[3])))  # the ranking: accuracy, then log loss
    assert best[0] == "keep" and f"promote --store {tiny_store} {best[1][-4:]}  (makes the best one current)" in out
    store = open_store(tiny_store)
    outcomes = store.compare(["keep", "finetune_new", "fresh_new"], epochs=3, promote="always")
    assert [o.strategy for o in outcomes] == ["keep", "finetune_new", "fresh_new"] and outcomes.failed == []
    accuracy = [o.metrics["holdout_accuracy"] for o in outcomes]
    best = max(range(3), key=lambda i: (accuracy[i], -outcomes[i].metrics["holdout_log_loss"]))
    assert [o.promoted for o in outcomes] == [i == best for i in range(3)]
    assert store.current == outcomes[best].version and store.last_outcome == outcomes[best] == outcomes[outcomes.best]
    assert repr(outcomes).startswith("Comparison([keep") and "(promoted)" in repr(outcomes)
    with pytest.raises(UserError, match=r"update runs one strategy; compare several"):
        store.update(["keep", "finetune_new"])
    assert all(f"{outcomes[best].strategy} scored higher" == o.reason for o in outcomes if not o.promoted)
    assert len({h["version"] for h in store.versions()}) == 1 + 2 + 2 + 3  # every strategy kept as a version
    err = run(capsys, *argv[:-2], "--set", "nonsense=1", code=2)["error"]
    assert "nonsense" in err


@pytest.mark.slow
def test_next_steps_are_runnable_as_printed(tiny_store: str, tmp_path: Path) -> None:
    """The `next:` line names the program as the user ran it, and the command works."""
    venv_ctrain = os.path.join(os.path.dirname(sys.executable), "ctrain")
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # ctrain is not on PATH, as after `make demo`
    argv = [venv_ctrain, "update", "--store", tiny_store, "--strategy", "finetune_new", "--set", "epochs=2"]
    out = subprocess.run([*argv, "--promote", "never"], capture_output=True, text=True, env=env, check=True).stdout
    step = out.strip().splitlines()[-1]
    assert step.startswith(f"next: {venv_ctrain} promote --store {tiny_store} ") and step.endswith("(makes it current)")
    command = step.removeprefix("next: ").split("  (")[0].split()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "is current" in done.stdout

    def runs_as_printed(argv: list[str]) -> subprocess.CompletedProcess:
        out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
        step = out.strip().splitlines()[-1]
        assert step.startswith(f"next: {venv_ctrain} "), step
        for command in step.removeprefix("next: ").split("  (")[0].split("; "):  # each, in order
            done = subprocess.run(command.split(), capture_output=True, text=True, env=env)
            assert done.returncode == 0, (step, done.stderr)
        return done

    pq.write_table(make_table(n=80, seed=8, shift=0.4), tmp_path / "more.parquet")
    subprocess.run([venv_ctrain, "ingest", "--store", tiny_store, str(tmp_path / "more.parquet")], check=True, env=env)
    several = [venv_ctrain, "update", "--store", tiny_store, "--strategy", "keep,finetune_new", "--set", "epochs=2"]
    runs_as_printed([*several, "--promote", "never"])  # next: promote the best of them
    labels = tmp_path / "labels.parquet"
    from continual_trainer.serve.served import Served

    served = Served(tiny_store, id_column="id")
    served.start()
    rows = make_table(n=30, seed=9)
    served.predict(rows.drop(["y"]).append_column("id", pa.array([f"r{i}" for i in range(30)])), served.current)
    served.stop()
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(30)], "y": rows.column("y")}), labels)
    runs_as_printed([venv_ctrain, "label", "--store", tiny_store, "--data", str(labels)])  # next: update on them
    current = Store.open(tiny_store).current()
    redone = runs_as_printed([venv_ctrain, "rollback", "--store", tiny_store])  # next: rollback again, redoing it
    assert Store.open(tiny_store).current() == current and "(redoes it)" in redone.stdout
    parent = Store.open(tiny_store).manifest(current).parent
    runs_as_printed([venv_ctrain, "promote", "--store", tiny_store, parent])  # next: rollback, undoing it
    assert Store.open(tiny_store).current() == current
    pq.write_table(make_table(n=80, seed=10, shift=3.0), tmp_path / "drifted.parquet")
    drift = [venv_ctrain, "drift", "--store", tiny_store, "--data", str(tmp_path / "drifted.parquet")]
    runs_as_printed([*drift, "--trigger", "features"])  # next: ingest the rows; update on them
    assert len(Store.open(tiny_store).versions()) > 3


def test_history_fits_100_columns_and_wide_shows_everything(tmp_path: Path, capsys) -> None:
    store, versions = _store_with_versions(tmp_path, capsys)
    assert main(["history", "--store", store]) == 0
    narrow = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in narrow) <= 100 and len(narrow) >= 1 + len(versions)
    assert all(any(v[-12:] in line for line in narrow) for v in versions)  # each named by its tail
    assert main(["history", "--store", store, "--wide"]) == 0
    wide = capsys.readouterr().out
    assert (all(v in wide for v in versions) and '"epochs": 2' in wide) or "epochs=2" in wide


def test_a_closed_pipe_ends_the_command_quietly(tiny_store: str) -> None:
    venv_ctrain = os.path.join(os.path.dirname(sys.executable), "ctrain")
    shell = f"{venv_ctrain} history --store {tiny_store} --wide | true; echo ${{PIPESTATUS[0]}}"  # true reads nothing
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0" and "error" not in done.stderr


def test_the_report_opens_with_now_last_and_next_and_counts_the_cost(tiny_store: str, tmp_path: Path) -> None:
    from continual_trainer.api import open_store

    store = open_store(tiny_store)
    text = (Path(store.write_report(str(tmp_path / "r1"))["folder"]) / "report.md").read_text()
    now = text.split("## Now", 1)[1].split("##", 1)[0]
    assert f"Current: {store.current}" in now and "Last: batch" in now and "from new.parquet" in now
    assert "Next: 1 batch(es) not learned yet (new.parquet)" in now and "--strategy finetune_all,ewc,fresh_all" in now
    outcome = store.update("finetune_new", epochs=2, promote="always")
    folder = Path(store.write_report(str(tmp_path / "r2"))["folder"])
    text = (folder / "report.md").read_text()
    now = text.split("## Now", 1)[1].split("##", 1)[0]
    assert f"Last: update made {outcome.version} current" in now and "Next: nothing to do" in now
    assert f"Cost: {sum(h['train_seconds'] or 0 for h in store.versions()):.1f} s of training over 1 update(s)" in text
    assert '<div class="now">' in (folder / "index.html").read_text()


def test_long_work_says_what_it_is_doing_and_names_the_strategy_it_trains(tiny_store: str) -> None:
    from continual_trainer.api import open_store

    terminal = io.StringIO()
    with reporting(Reporter("update", stream=terminal, tty=True)):
        open_store(tiny_store).update("finetune_new", epochs=2, promote="never")
    said = terminal.getvalue()
    for phase in ("checking and reading 2 batch(es) (1 new)", "building finetune_new", "held-out rows"):
        assert phase in said, said
    assert "finetune_new: epochs" in said  # the bar names the strategy it counts
    terminal = io.StringIO()
    with reporting(Reporter("update", stream=terminal, tty=True)):
        open_store(tiny_store).compare(["finetune_new", "fresh_new"], epochs=2, promote="never")
    assert "training finetune_new, fresh_new side by side" in terminal.getvalue()
    piped = io.StringIO()  # not a terminal: no phase lines for scripts to read
    with reporting(Reporter("update", stream=piped, tty=False, interval=3600)):
        open_store(tiny_store).update("keep", promote="never")
    assert piped.getvalue() == ""


def test_the_sweep_bar_names_the_best_configuration_by_its_mean_over_seeds() -> None:
    from continual_trainer.sweep import _Progress

    bar = _Progress(total=4, done=0, task="classification")
    bar.best("lucky", {"holdout_accuracy": 0.95, "holdout_log_loss": 0.2}, '{"lr": 1}')
    bar.best("steady", {"holdout_accuracy": 0.90, "holdout_log_loss": 0.2}, '{"lr": 2}')
    bar.best("steady", {"holdout_accuracy": 0.91, "holdout_log_loss": 0.2}, '{"lr": 2}')
    assert bar._note == "best lucky accuracy 0.950"
    bar.best("lucky", {"holdout_accuracy": 0.80, "holdout_log_loss": 0.2}, '{"lr": 1}')  # its mean falls to 0.875
    assert bar._note == "best steady accuracy 0.905 (mean of 2 seeds)"


def test_the_plot_over_time_joins_only_versions_scored_on_the_same_holdout_rows(tiny_store: str) -> None:
    from continual_trainer.api import open_store
    from continual_trainer.report import comparable_steps

    store = open_store(tiny_store)
    store.compare(["finetune_new", "fresh_new"], epochs=2, promote="never")  # both on the two batches' holdout
    history = store.versions()
    assert len(history) == 3 and history[0]["batches_seen"] != history[1]["batches_seen"]
    assert comparable_steps(history) == [2]  # the initial version saw one batch: no line to the first update


def test_a_versions_manifest_says_how_its_training_ended(tiny_store: str) -> None:
    """Each training run's epochs, why it stopped and the epoch kept reach the manifest; a
    fine-tuning no epoch of which beats the current model (a learning rate far too high) keeps
    epoch 0, the current model unchanged, and scores as it does."""
    from continual_trainer.api import open_store

    store = open_store(tiny_store)
    kept = store.update("finetune_new", promote="never", patience=2, learning_rate=5.0, epochs=30)
    training = Store.open(tiny_store).manifest(kept.version).execution["training"]
    assert training == [{"epochs": 2, "stopped": "patience", "best_epoch": 0}]
    assert kept.metrics["holdout_accuracy"] == kept.current_metrics["holdout_accuracy"]
    assert kept.metrics["holdout_log_loss"] == pytest.approx(kept.current_metrics["holdout_log_loss"])
    ensemble = store.update("ensemble_new", promote="never", epochs=3)
    runs = Store.open(tiny_store).manifest(ensemble.version).execution["training"]
    assert runs == [{"epochs": 3, "stopped": None, "best_epoch": None}]  # the new member's run
