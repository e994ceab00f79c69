"""The tutorial's strategy grid, 7 strategies x 5 seeds: `ctrain` against Ray Tune over Keras `fit`.

Two data sets unlike each other, each as an old and a new half in two Parquet files:
- tutorial: `make_classification(1000, 20 features, 15 informative, 5 redundant,
  random_state=1)`: 20 float columns, two classes;
- digits: scikit-learn's 8x8 digits (1,797 rows): 64 integer columns, ten classes.
Whole processes, side by side, each paying its interpreter start, imports and TensorFlow start:
- ctrain: `ctrain init` (the old model, the tutorial's recipe: 150 epochs at batch 32),
  `ctrain ingest` of the new half, `ctrain sweep` of finetune_new, finetune_all, fresh_new,
  fresh_all, ensemble_new, ensemble_all and graft with the tutorial's settings, seeds 0-4
  (the default: in this process, trials two at a time on the 2 cores; below 5,000 rows
  nothing is sized, so both sides do the same updates);
- the peer a user would write (scripts/peer_tune_keras.py): the old model fitted once in the
  driver, a local Ray started, a Tune grid of the same 35 trials, each updating the model the
  tutorial's way with Keras `fit`, one trial per CPU; run twice, with `fit` as written by
  default and with `fit` tuned as Keras's performance advice says (`steps_per_execution=64`,
  one `fit` over a repeated `tf.data` pipeline).
Printed: each side's wall time and the ratios, and each strategy's mean holdout accuracy on
every side (the holdouts differ: the store draws a fifth of each batch, the peer takes each
file's last fifth).

Run: .venv/bin/python scripts/bench_grid.py [--data tutorial|digits|both]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from bench_check import check, emit

HERE = os.path.dirname(os.path.abspath(__file__))
CTRAIN = os.path.join(os.path.dirname(sys.executable), "ctrain")
GRID = """
strategies: [finetune_new, finetune_all, fresh_new, fresh_all, ensemble_new, ensemble_all, graft]
seeds: 5
"""


def run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout
    return time.perf_counter() - start, out


def data_set(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        return x.astype(np.int64), y
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=1000, n_features=20, n_informative=15, n_redundant=5, random_state=1)
    return x.astype(np.float32), y


def grid(name: str, env: dict[str, str]) -> tuple[float, float, float]:
    """Seconds of ctrain, of the default peer and of the tuned peer on data set `name`."""
    from sklearn.model_selection import train_test_split

    x, y = data_set(name)
    x_old, x_new, y_old, y_new = train_test_split(x, y, test_size=0.50, random_state=1)
    print(f"== {name}: {len(x)} rows x {x.shape[1]} {x.dtype} columns, {len(set(y))} classes", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for half, xs, ys in (("old", x_old, y_old), ("new", x_new, y_new)):
            frame = pd.DataFrame(xs, columns=[f"x{i}" for i in range(x.shape[1])])
            frame["y"] = ys
            frame.to_parquet(os.path.join(tmp, f"{half}.parquet"), index=False)
        config = os.path.join(tmp, "grid.yaml")
        with open(config, "w") as f:
            f.write(GRID)
        store = os.path.join(tmp, "store")
        steps = [
            [CTRAIN, "init", "--store", store, "--data", os.path.join(tmp, "old.parquet"), "--label", "y"],
            [CTRAIN, "ingest", "--store", store, os.path.join(tmp, "new.parquet")],
            [CTRAIN, "sweep", "--store", store, "--config", config],
        ]
        ours, outs = 0.0, []
        for argv in steps:
            seconds, out = run(argv, env)
            ours += seconds
            outs.append(out)
            print(f"  {argv[1]}: {seconds:.1f} s", flush=True)
        print(f"ctrain init + ingest + sweep: {ours:.1f} s")
        print(outs[-1].strip(), flush=True)
        peers = []
        for how in ("default", "tuned"):
            extra = ["--tuned"] if how == "tuned" else []
            peer, peer_out = run([sys.executable, os.path.join(HERE, "peer_tune_keras.py"), "--data", tmp, *extra], env)
            peers.append(peer)
            print(f"Ray Tune over Keras fit ({how}): {peer:.1f} s -> ctrain is {peer / ours:.1f}x faster")
            print(peer_out.strip(), flush=True)
    return ours, peers[0], peers[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["tutorial", "digits", "both"], default="both")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    checks = []
    for name in ("tutorial", "digits") if args.data == "both" else (args.data,):
        ours, default, tuned = grid(name, env)
        key = "grid" if name == "tutorial" else f"grid.{name}"
        what = f"grid 7x5 on {name}: ctrain init+ingest+sweep vs Ray Tune over Keras fit"
        checks.append(check(f"{what} (default fit)", default / ours, 10.0, readme=key))
        checks.append(check(f"{what} (tuned fit)", tuned / ours, 3.0, readme=f"{key}.tuned"))
    emit(checks)


if __name__ == "__main__":
    main()
