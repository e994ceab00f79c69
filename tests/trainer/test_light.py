"""Scoring plain Dense stacks without TensorFlow: the same numbers as Keras, or Keras itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from continual_trainer.trainer.candidate import Candidate, member_output
from continual_trainer.trainer.light import DenseStack, read
from continual_trainer.trainer.models import ModelSpec, build_model, to_bytes
from tests.conftest import make_table


def _info(x: np.ndarray):
    from continual_trainer.data.columns import InputInfo

    cols = tuple(f"x{i}" for i in range(x.shape[1]))
    return {
        "numeric": InputInfo((x.shape[1],), "float32", mean=tuple(x.mean(0)), variance=tuple(x.var(0)), columns=cols)
    }


def _keras_way(x: np.ndarray, units: int, activation: str):
    """A Sequential model as Keras's guides build one: an adapted Normalization, Dropout."""
    import keras

    norm = keras.layers.Normalization()
    norm.adapt(x)
    return keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            norm,
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(8, activation="relu", use_bias=False),
            keras.layers.Dense(units, activation=activation),
        ]
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda x: build_model(ModelSpec((8, 4)), _info(x), 2, seed=0),  # mlp: sigmoid head
        lambda x: build_model(ModelSpec((8,)), _info(x), 5, seed=1),  # softmax head
        lambda x: build_model(ModelSpec((8,)), _info(x), 0, seed=2, target=(50.0, 7.0)),  # regression, rescaled
        lambda x: build_model(ModelSpec((6,)), x.shape[1], 3, seed=3),  # no normalisation
        lambda x: _keras_way(x, 3, "softmax"),
        lambda x: _keras_way(x, 1, "linear"),
    ],
)
def test_a_dense_stack_read_from_its_file_computes_what_keras_computes(make) -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(300, 6)).astype(np.float32)
    model = make(x)
    light = read(to_bytes(model))
    assert isinstance(light, DenseStack)
    expected = np.asarray(model(x, training=False), np.float64)
    got = member_output(light, {"numeric": x})
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_anything_else_is_left_to_keras() -> None:
    import keras

    inp = keras.Input((4,))
    functional = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(inp))
    odd = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="gelu"), keras.layers.Dense(1)])
    conv = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
                             keras.layers.Dense(1, activation="sigmoid")])  # fmt: skip
    for model in (functional, odd, conv):
        assert read(to_bytes(model)) is None
    assert read(b"not a zip") is None


def test_an_ensemble_of_light_members_predicts_as_the_keras_one() -> None:
    x = np.random.default_rng(1).normal(size=(200, 6)).astype(np.float32)
    members = (build_model(ModelSpec((8,)), _info(x), 3, seed=0), build_model(ModelSpec((5,)), _info(x), 2, seed=1))
    keras_side = Candidate(members, (0.7, 0.3))
    light = Candidate(tuple(read(to_bytes(m)) for m in members), (0.7, 0.3))
    np.testing.assert_allclose(light.predict(x, 3), keras_side.predict(x, 3), atol=1e-5)


def test_predict_and_a_quiet_stream_file_import_no_tensorflow(tmp_path: Path) -> None:
    """A store's `mlp` model scores a day's file, and a stream file whose trigger stays quiet is
    handled, in a process that never imports TensorFlow; the predictions match Keras's."""
    pq.write_table(make_table(seed=0), tmp_path / "old.parquet")
    pq.write_table(make_table(seed=6), tmp_path / "day.parquet")
    (tmp_path / "inbox").mkdir()
    pq.write_table(make_table(seed=1, n=60), tmp_path / "inbox" / "small.parquet")  # too few rows to fire
    from continual_trainer.cli import main

    assert main(["init", "--store", str(tmp_path / "s"), "--data", str(tmp_path / "old.parquet"), "--label", "y",
                 "--epochs", "5", "--quiet"]) == 0  # fmt: skip
    s, inbox = str(tmp_path / "s"), str(tmp_path / "inbox")
    predict = [
        "predict",
        "--store",
        s,
        "--data",
        str(tmp_path / "day.parquet"),
        "--out",
        str(tmp_path / "light.parquet"),
    ]
    stream = ["stream", "--store", s, "--inbox", inbox, "--once", "--trigger", "performance", "--json"]
    script = (
        "import sys\nfrom continual_trainer.cli import main\n"
        f"assert main({predict!r}) == 0\nassert main({stream!r}) == 0\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split()[-2:] == ["False", "False"]
    (event,) = json.loads(out.strip().splitlines()[-2])["events"]
    assert event["status"] == "ingested" and event["drift"]["accuracy"] > 0.5, event  # scored, the model stays
    from continual_trainer.data.storage import Store
    from continual_trainer.versions import load_candidate

    store = Store.open(str(tmp_path / "s"))
    table = pq.read_table(tmp_path / "day.parquet")
    expected = load_candidate(store, store.current()).predict(store.schema.inputs(table), store.schema.n_classes)
    light = pq.read_table(tmp_path / "light.parquet")
    assert light.column("prediction").to_pylist() == list(store.schema.classes[i] for i in expected.argmax(1))
