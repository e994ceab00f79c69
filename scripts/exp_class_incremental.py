"""Class-incremental digits: five batches of two classes each, through every strategy.

scikit-learn's digits (1,797 8x8 images, 64 pixel columns) arrive two classes at a time, so
pixels the first two digits barely touch vary only later. The store is made from the first
batch with `mlp:100,100`; each later batch is ingested with `--new-classes` and every strategy
runs on the store after the last batch (`--promote never`, each from the first model), scored
on the store's holdout of all five batches. Beside them, one network fitted once on every
training row the way Keras's own guides fit one (an adapted `Normalization`, the same layers,
SGD 0.01 with momentum 0.9, 150 epochs of 32, `model.fit`), scored on the same rows.

    python scripts/exp_class_incremental.py [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def batches(folder: str, seed: int) -> list[str]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data.astype(np.float32), d.target
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(5):
        idx = np.flatnonzero((y == 2 * k) | (y == 2 * k + 1))
        rng.shuffle(idx)
        path = os.path.join(folder, f"digits-{2 * k}{2 * k + 1}.parquet")
        pq.write_table(pa.table({**{f"p{i}": x[idx, i] for i in range(64)}, "digit": y[idx]}), path)
        paths.append(path)
    return paths


def keras_baseline(store, seed: int) -> float:
    """One network fitted once on every training row with Keras's own `fit`."""
    import keras

    from continual_trainer.data.batches import load_rows

    train, holdout = load_rows(store, store.batch_ids())
    x, y = train.x["numeric"], train.y
    keras.utils.set_random_seed(seed)
    norm = keras.layers.Normalization()
    norm.adapt(x)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            norm,
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=150, batch_size=32, verbose=0)
    return float((model.predict(holdout.x["numeric"], verbose=0).argmax(axis=1) == holdout.y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import continual_trainer as ct
    from continual_trainer import strategies
    from continual_trainer.data.storage import Store

    with tempfile.TemporaryDirectory() as tmp:
        paths = batches(tmp, args.seed)
        store = ct.init_store(os.path.join(tmp, "store"), paths[0], "digit", model="mlp:100,100", seed=args.seed)
        store.ingest(paths[1:], new_classes=True)
        baseline = keras_baseline(Store.open(store.uri), args.seed)
        print(f"{'one network fitted once on all rows (Keras fit)':48} accuracy {baseline:.3f}")
        for name in strategies.names(trains=True):
            try:
                outcome = store.update(name, promote="never", seed=args.seed)
            except ct.UserError as exc:
                print(f"{name:48} refused: {str(exc)[:70]}")
                continue
            m = outcome.metrics
            print(
                f"{name:48} accuracy {m['holdout_accuracy']:.3f}  "
                f"({m['holdout_accuracy'] - baseline:+.3f} vs one network)"
            )


if __name__ == "__main__":
    main()
