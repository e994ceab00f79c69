"""The tutorial's strategy grid as a user would write it with Ray Tune over Keras `fit` trainables.

The peer of `ctrain init + ingest + sweep` in scripts/bench_grid.py: the old model is fitted
once in the driver (Dense 20-10-1, SGD 0.01 momentum 0.9, 150 epochs, batch 32) and saved;
a local Ray starts (token authentication on, as Ray 2.60 defaults); Tune runs a grid of
7 strategies x 5 seeds, one trial per CPU, each trial reading the old and new rows from
Parquet (standardised by the old batch's mean and standard deviation), loading the old model and
updating it the tutorial's way (scripts/tutorial_keras.py's
`update`: fine-tune with SGD 0.001 for 100 epochs, fit a fresh model for 150, average an
ensemble, graft a layer), then scoring the held-out fifth of each batch; the driver prints
each strategy's mean accuracy over seeds. The network's width and head follow the data (any
number of numeric columns, two classes or more). With `--tuned`, every `fit` is tuned as
Keras's performance advice says (`steps_per_execution=64`, one `fit` over a repeated
`tf.data` pipeline; tutorial_keras.py's `fit`).

Run: python scripts/peer_tune_keras.py --data DIR [--tuned]   (DIR holds old.parquet and new.parquet, label y)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
GRID = ["finetune_new", "finetune_all", "fresh_new", "fresh_all", "ensemble_new", "ensemble_all", "graft"]
SEEDS = 5


def split(path: str, scale_from: str | None = None):
    """(train x, train y, holdout x, holdout y): the last fifth of the file held out, the columns
    standardised by the mean and standard deviation of `scale_from`'s training rows (the old
    batch: what an adapted `Normalization` would hold), as a competent engineer feeds a network
    features such as pixel counts of 0-16."""
    import pandas as pd

    frame = pd.read_parquet(path)
    x, y = frame.drop(columns="y").to_numpy("float32"), frame["y"].to_numpy()
    cut = int(len(frame) * 0.8)
    if scale_from is not None:
        base = pd.read_parquet(scale_from).drop(columns="y").to_numpy("float32")
        base = base[: int(len(base) * 0.8)]
        x = (x - base.mean(axis=0)) / np.maximum(base.std(axis=0), 1e-3)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def trainable(config: dict) -> None:
    import keras
    from ray import tune

    sys.path.insert(0, HERE)
    from tutorial_keras import predicted, update

    keras.utils.set_random_seed(config["seed"])
    old = os.path.join(config["data"], "old.parquet")
    x_old, y_old, hx_old, hy_old = split(old, old)
    x_new, y_new, hx_new, hy_new = split(os.path.join(config["data"], "new.parquet"), old)
    old_model = keras.models.load_model(config["model"])
    hx, hy = np.vstack((hx_old, hx_new)), np.hstack((hy_old, hy_new))
    yhat = update(config["strategy"], old_model, x_old, y_old, x_new, y_new, x_score=hx, tuned=config["tuned"])
    tune.report({"accuracy": float((predicted(yhat) == hy).mean())})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--tuned", action="store_true", help="fit with steps_per_execution over a tf.data pipeline")
    args = p.parse_args()
    import ray
    from ray import tune

    sys.path.insert(0, HERE)
    from tutorial_keras import define_model, fit

    old = os.path.join(args.data, "old.parquet")
    x_old, y_old, _, _ = split(old, old)
    with tempfile.TemporaryDirectory() as tmp:
        _, y_new, _, _ = split(os.path.join(args.data, "new.parquet"))
        classes = len(set(y_old.tolist()) | set(y_new.tolist()))
        model = define_model(x_old.shape[1], classes)
        fit(model, x_old, y_old, 0.01, 150, args.tuned)
        path = os.path.join(tmp, "old.keras")
        model.save(path)
        ray.init(include_dashboard=False, log_to_driver=False)
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={
                "strategy": tune.grid_search(GRID),
                "seed": tune.grid_search(list(range(SEEDS))),
                "data": os.path.abspath(args.data),
                "model": path,
                "tuned": args.tuned,
            },
            run_config=tune.RunConfig(storage_path=os.path.join(tmp, "tune"), verbose=0),
        )
        results = tuner.fit().get_dataframe()
        ray.shutdown()
    means = results.groupby("config/strategy")["accuracy"].mean()
    for name in GRID:
        print(f"{name}: holdout accuracy {means[name]:.3f} (mean of {SEEDS} seeds)")


if __name__ == "__main__":
    main()
