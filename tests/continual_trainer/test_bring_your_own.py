"""Users' own networks and columns through the CLI: imported and built models, tensors, categories, regression."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from continual_trainer.data.storage import Store


def run(capsys, *argv: str) -> tuple[int, dict, str]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


def images(n: int, seed: int, fixed: bool = True, shift: float = 0.0) -> pa.Table:
    """8x8 digits-like images as a list column and a label."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(d.target), size=n, replace=False)
    x = (d.images[idx] / 16.0 + shift).reshape(n, 64).astype(np.float32)
    values = pa.array(x.ravel())
    col = (
        pa.FixedSizeListArray.from_arrays(values, 64)
        if fixed
        else pa.ListArray.from_arrays(np.arange(0, 64 * n + 1, 64), values)
    )
    return pa.table({"image": col, "digit": pa.array((d.target[idx] >= 5).astype(np.int64))})


def tabular(n: int, seed: int, colours=("red", "green", "blue"), regression: bool = False) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1, 10, 100] + [0, 50, 1000]
    colour = rng.choice(colours, size=n)
    signal = x[:, 0] + (x[:, 1] - 50) / 10 + (colour == "red") * 1.5
    y = signal * 20 + 300 + rng.normal(size=n) if regression else (signal > 0.5).astype(np.int64)
    return pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "colour": pa.array(colour).dictionary_encode(), "y": y})


def test_regression_store_end_to_end(tmp_path: Path, capsys) -> None:
    store = str(tmp_path / "reg")
    for name, seed in (("old", 0), ("new", 1), ("score", 2)):
        pq.write_table(tabular(300, seed, regression=True), tmp_path / f"{name}.parquet")
    code, first, err = run(capsys, "init", "--store", store, "--data", str(tmp_path / "old.parquet"), "--label", "y")
    assert code == 0, err
    assert {"holdout_rmse", "holdout_mae", "holdout_r2"} <= set(first["metrics"])
    assert first["metrics"]["holdout_r2"] > 0.5, first["metrics"]  # learns in spite of unscaled columns and label
    assert Store.open(store).schema.task == "regression"
    assert main(["ingest", "--store", store, str(tmp_path / "new.parquet")]) == 0
    for strategy in ("finetune_all", "fresh_all", "ensemble_all", "graft"):
        argv = ["update", "--store", store, "--strategy", strategy, "--set", "epochs=30", "--promote", "never"]
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        assert out["metrics"]["holdout_rmse"] > 0
    code, out, err = run(capsys, "update", "--store", store, "--strategy", "new_head")
    assert code == 2 and "regression store has no classes" in err
    code, _, err = run(
        capsys,
        "predict",
        "--store",
        store,
        "--data",
        str(tmp_path / "score.parquet"),
        "--out",
        str(tmp_path / "p.parquet"),
    )
    assert code == 0, err
    pred = pq.read_table(tmp_path / "p.parquet")
    assert pred.schema.field("prediction").type == pa.float64() and "probability" not in pred.column_names
    truth = pq.read_table(tmp_path / "score.parquet").column("y").to_numpy()
    assert np.corrcoef(pred.column("prediction").to_numpy(), truth)[0, 1] > 0.7
    sweep = tmp_path / "s.yaml"
    sweep.write_text("strategies: [keep, {fresh_all: {epochs: 10}}]\n")
    code, out, err = run(capsys, "sweep", "--store", store, "--config", str(sweep), "--local")
    assert code == 0 and out["finished"] == 2, err
    report = Path(out["folder"], "report.md").read_text()
    assert "holdout rmse" in report and "lower RMSE" in report and "plots/rmse_by_strategy.png" in report


def test_tensor_and_categorical_columns(tmp_path: Path, capsys) -> None:
    store = str(tmp_path / "img")
    pq.write_table(images(300, 0, fixed=False), tmp_path / "old.parquet")
    argv = ["init", "--store", store, "--data", str(tmp_path / "old.parquet"), "--label", "digit"]
    code, first, err = run(
        capsys, *argv, "--shape", "image=8,8,1", "--model", "tests.strategies.families:cnn", "--epochs", "40"
    )
    assert code == 0, err
    assert first["metrics"]["holdout_accuracy"] > 0.8
    column = Store.open(store).schema.column("image")
    assert (column.kind, column.shape) == ("tensor", (8, 8, 1)) and column.mean is not None
    pq.write_table(images(200, 1), tmp_path / "new.parquet")  # a fixed-size list this time: same kind
    assert main(["ingest", "--store", store, str(tmp_path / "new.parquet")]) == 0
    code, out, err = run(capsys, "update", "--store", store, "--strategy", "fresh_all", "--set", "epochs=5")
    assert code == 0, err

    shop = str(tmp_path / "shop")
    pq.write_table(tabular(300, 0), tmp_path / "t0.parquet")
    assert (
        main(["init", "--store", shop, "--data", str(tmp_path / "t0.parquet"), "--label", "y", "--epochs", "30"]) == 0
    )
    assert Store.open(shop).schema.column("colour").vocabulary == ("blue", "green", "red")
    pq.write_table(tabular(200, 1, colours=("red", "violet")), tmp_path / "t1.parquet")
    assert main(["ingest", "--store", shop, str(tmp_path / "t1.parquet")]) == 0
    assert Store.open(shop).schema.column("colour").vocabulary == ("blue", "green", "red", "violet")  # grown
    capsys.readouterr()
    for strategy in ("finetune_new", "fresh_all", "graft"):  # the old model sees violet as out-of-vocabulary
        code, out, err = run(capsys, "update", "--store", shop, "--strategy", strategy, "--set", "epochs=5")
        assert code == 0, err
    unseen = tabular(50, 2, colours=("never-seen",)).drop_columns(["y"])
    pq.write_table(unseen, tmp_path / "unseen.parquet")
    code, out, err = run(
        capsys,
        "predict",
        "--store",
        shop,
        "--data",
        str(tmp_path / "unseen.parquet"),
        "--out",
        str(tmp_path / "o.parquet"),
    )
    assert code == 0 and out["rows"] == 50, err


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (lambda t: t.set_column(0, "image", pa.array([[0.0] * 63] * t.num_rows)), "length is not 64"),
        (lambda t: t.set_column(0, "image", pa.array([[np.nan] + [0.0] * 63] * t.num_rows)), "NaN or infinite"),
        (
            lambda t: t.set_column(
                0, "image", pa.array([None] + [[0.0] * 64] * (t.num_rows - 1), pa.list_(pa.float64()))
            ),
            "missing value",
        ),
        (
            lambda t: t.set_column(0, "image", pa.array(["x"] * t.num_rows)),
            "is string here; the store holds it as tensor",
        ),
    ],
)
def test_bad_tensor_columns_are_one_line_and_quarantined(table, expected: str, tmp_path: Path, capsys) -> None:
    store = str(tmp_path / "img")
    pq.write_table(images(100, 0), tmp_path / "old.parquet")
    assert (
        main(["init", "--store", store, "--data", str(tmp_path / "old.parquet"), "--label", "digit", "--epochs", "2"])
        == 0
    )
    pq.write_table(table(images(50, 1)), tmp_path / "bad.parquet")
    capsys.readouterr()
    assert main(["ingest", "--store", store, str(tmp_path / "bad.parquet")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err and "'image'" in err and "bad.parquet" in err, err
    assert len(Store.open(store).quarantined()) == 1


def test_an_imported_keras_model_and_its_architecture(tmp_path: Path, capsys) -> None:
    import keras

    from continual_trainer.data.schema import Schema
    from tests.strategies.families import tabular as tabular_model

    pq.write_table(tabular(300, 0), tmp_path / "t0.parquet")
    spec = Schema.infer(pq.read_table(tmp_path / "t0.parquet"), "y", "t0").input_spec()
    model = tabular_model(spec, 1, 3)
    path = tmp_path / "prod.keras"
    model.save(path)
    before = [w.copy() for w in model.get_weights()]
    store = str(tmp_path / "s")
    code, first, err = run(
        capsys, "init", "--store", store, "--data", str(tmp_path / "t0.parquet"), "--label", "y", "--model", str(path)
    )
    assert code == 0, err
    assert first["strategy"] == "import" and first["train_seconds"] == 0 and "holdout_accuracy" in first["metrics"]
    stored = Store.open(store)
    assert stored.meta.model == "imported" and stored.architecture() == path.read_bytes()
    from continual_trainer.versions import load_candidate

    (loaded,) = load_candidate(stored, stored.current()).members
    for a, b in zip(before, loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # imported as it is
    pq.write_table(tabular(200, 1), tmp_path / "t1.parquet")
    assert main(["ingest", "--store", store, str(tmp_path / "t1.parquet")]) == 0
    capsys.readouterr()
    code, out, err = run(
        capsys, "update", "--store", store, "--strategy", "fresh_all", "--set", "epochs=5", "--promote", "always"
    )
    assert code == 0, err
    (fresh,) = load_candidate(Store.open(store), out["version"]).members
    assert [type(x).__name__ for x in fresh.layers] == [type(x).__name__ for x in loaded.layers]  # same architecture
    assert not np.allclose(fresh.get_weights()[0], loaded.get_weights()[0])  # fresh weights
    trained = str(tmp_path / "t")
    code, out, err = run(
        capsys,
        "init",
        "--store",
        trained,
        "--data",
        str(tmp_path / "t0.parquet"),
        "--label",
        "y",
        "--model",
        str(path),
        "--train",
        "--epochs",
        "3",
    )
    assert code == 0 and out["strategy"] == "import+train" and out["train_seconds"] > 0, err
    keras.backend.clear_session()


@pytest.mark.slow
def test_an_imported_model_trains_as_it_was_compiled_unless_set(tmp_path: Path, capsys) -> None:
    """The store's imported architecture carries its compile(): every strategy trains with its
    optimizer and settings (the manifest records them, the plan line names them); a `--set`
    key wins, and `--set optimizer=...` drops the model's settings altogether."""
    import keras

    from continual_trainer.data.schema import Schema
    from tests.strategies.families import tabular as tabular_model

    pq.write_table(tabular(300, 0), tmp_path / "t0.parquet")
    pq.write_table(tabular(200, 1), tmp_path / "t1.parquet")
    spec = Schema.infer(pq.read_table(tmp_path / "t0.parquet"), "y", "t0").input_spec()
    model = tabular_model(spec, 1, 3)
    model.compile(keras.optimizers.Adam(learning_rate=0.003, beta_2=0.99), "binary_crossentropy")
    model.save(tmp_path / "adam.keras")
    store = str(tmp_path / "s")
    init = ["init", "--store", store, "--data", str(tmp_path / "t0.parquet"), "--label", "y"]
    assert main([*init, "--model", str(tmp_path / "adam.keras")]) == 0
    assert main(["ingest", "--store", store, str(tmp_path / "t1.parquet")]) == 0
    capsys.readouterr()
    update = ["update", "--store", store, "--strategy", "finetune_all", "--promote", "never"]

    def trained_with(*extra: str) -> tuple[dict, str]:
        code, out, err = run(capsys, *update, "--set", "epochs=1", *extra)
        assert code == 0, err
        return Store.open(store).manifest(out["version"]).params, err

    params, err = trained_with()
    assert (params["optimizer"], params["learning_rate"], params["beta_2"]) == ("adam", 0.003, 0.99)
    assert "trains as the model was compiled: Adam (learning_rate 0.003" in err
    # on 400 rows, below the sizing: the user's network stops early all the same (the reference
    # recipe's 100 epochs without stopping were made for the tutorial's), unless set
    assert params["patience"] == 15 and "early stopping (patience 15)" in err
    assert trained_with("--set", "patience=0")[0]["patience"] == 0
    params, _ = trained_with("--set", "learning_rate=0.01")
    assert (params["optimizer"], params["learning_rate"], params["beta_2"]) == ("adam", 0.01, 0.99)
    params, err = trained_with("--set", "optimizer=sgd")
    assert (params["optimizer"], params["beta_2"]) == ("sgd", 0.999) and params["learning_rate"] != 0.003
    assert "trains as the model was compiled" not in err
    keras.backend.clear_session()


def test_an_imported_regression_model_trains_with_the_loss_it_was_compiled_with(tmp_path: Path, capsys) -> None:
    """A regression model compiled with MAE is updated with MAE (the manifest records it, the
    plan line names it); `--set loss=...` wins; `--set optimizer=...` keeps the model's loss."""
    import keras

    from continual_trainer.data.schema import Schema

    pq.write_table(tabular(300, 0, regression=True), tmp_path / "r0.parquet")
    pq.write_table(tabular(200, 1, regression=True), tmp_path / "r1.parquet")
    spec = Schema.infer(pq.read_table(tmp_path / "r0.parquet"), "y", "r0").input_spec()
    numeric = keras.Input(spec["numeric"].shape, name="numeric")
    colour = keras.Input((), dtype="string", name="colour")
    norm = keras.layers.Normalization(mean=list(spec["numeric"].mean), variance=list(spec["numeric"].variance))
    codes = keras.layers.StringLookup(vocabulary=list(spec["colour"].vocabulary), output_mode="one_hot")(colour)
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([norm(numeric), codes]))
    model = keras.Model({"numeric": numeric, "colour": colour}, keras.layers.Dense(1)(hidden))  # a linear head
    model.compile("sgd", "mae")
    model.save(tmp_path / "mae.keras")
    store = str(tmp_path / "s")
    init = ["init", "--store", store, "--data", str(tmp_path / "r0.parquet"), "--label", "y"]
    assert main([*init, "--model", str(tmp_path / "mae.keras")]) == 0
    assert main(["ingest", "--store", store, str(tmp_path / "r1.parquet")]) == 0
    capsys.readouterr()
    update = ["update", "--store", store, "--strategy", "finetune_all", "--promote", "never", "--set", "epochs=1"]

    def loss(*extra: str) -> tuple[str, str]:
        code, out, err = run(capsys, *update, *extra)
        assert code == 0, err
        return Store.open(store).manifest(out["version"]).params["loss"], err

    trained, err = loss()
    assert trained == "mae" and "loss mae" in err
    assert loss("--set", "loss=huber")[0] == "huber"
    assert loss("--set", "optimizer=adam")[0] == "mae"
    keras.backend.clear_session()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("{garbage}", "not a Keras model that loads in safe mode"),
        ("{wrong_input}", "input 'x' has no column of that name"),
        ("{missing}", "no such file"),
        ("tests.no_such_module:build", "cannot import it here"),
        ("tests.continual_trainer.test_bring_your_own:raising_builder", "raised RuntimeError: no GPU in here"),
        ("tests.continual_trainer.test_bring_your_own:wrong_builder", "returned str, not a keras.Model"),
        ("tests.continual_trainer.test_bring_your_own:wide_builder", "output has 3 unit(s); 2 classes needs 1"),
        ("cnn:3", "unknown model family"),
    ],
)
def test_bad_models_are_one_line_and_write_nothing(model: str, expected: str, tmp_path: Path, capsys) -> None:
    import keras

    pq.write_table(tabular(100, 0), tmp_path / "t0.parquet")
    (tmp_path / "garbage.keras").write_bytes(b"PK\x03\x04 not a zip really")
    x, z = keras.Input((3,), name="x"), keras.Input((2,), name="z")
    keras.Model({"x": x, "z": z}, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Concatenate()([x, z]))).save(
        tmp_path / "wrong_input.keras"
    )
    model = model.format(
        garbage=tmp_path / "garbage.keras",
        wrong_input=tmp_path / "wrong_input.keras",
        missing=tmp_path / "missing.keras",
    )
    store = tmp_path / "s"
    code = main(
        [
            "init",
            "--store",
            str(store),
            "--data",
            str(tmp_path / "t0.parquet"),
            "--label",
            "y",
            "--model",
            model,
            "--epochs",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not store.exists()


def raising_builder(inputs, n_outputs, seed):
    raise RuntimeError("no GPU in here")


def wrong_builder(inputs, n_outputs, seed):
    return "a model, promise"


def wide_builder(inputs, n_outputs, seed):
    import keras

    from continual_trainer.trainer.models import feed  # noqa: F401 - builders may use the project's helpers

    a, b = keras.Input((3,), name="numeric"), keras.Input((), dtype="string", name="colour")
    return keras.Model({"numeric": a, "colour": b}, keras.layers.Dense(3, activation="softmax")(a))
