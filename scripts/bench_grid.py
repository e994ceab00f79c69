"""The tutorial's strategy grid, 7 strategies x 5 seeds: `ctrain` against Ray Tune over Keras `fit`.

The same data (the tutorial's `make_classification(1000, 20 features, 15 informative, 5
redundant, random_state=1)`, its old and new halves as two Parquet files), whole processes,
side by side, each paying its interpreter start, imports and TensorFlow start:
- ctrain: `ctrain init` (the old model, the tutorial's recipe: 150 epochs at batch 32),
  `ctrain ingest` of the new half, `ctrain sweep` of finetune_new, finetune_all, fresh_new,
  fresh_all, ensemble_new, ensemble_all and graft with the tutorial's settings, seeds 0-4
  (the default: in this process, trials two at a time on the 2 cores);
- the peer a user would write (scripts/peer_tune_keras.py): the old model fitted once in the
  driver, a local Ray started, a Tune grid of the same 35 trials, each updating the model the
  tutorial's way with Keras `fit`, one trial per CPU.
Printed: each side's wall time and the ratio, and each strategy's mean holdout accuracy on
both sides (the holdouts differ: the store draws a fifth of each batch, the peer takes each
file's last fifth).

Run: .venv/bin/python scripts/bench_grid.py
"""

from __future__ import annotations

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


def main() -> None:
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    x, y = make_classification(n_samples=1000, n_features=20, n_informative=15, n_redundant=5, random_state=1)
    x_old, x_new, y_old, y_new = train_test_split(x, y, test_size=0.50, random_state=1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with tempfile.TemporaryDirectory() as tmp:
        for name, xs, ys in (("old", x_old, y_old), ("new", x_new, y_new)):
            frame = pd.DataFrame(xs.astype(np.float32), columns=[f"x{i}" for i in range(20)])
            frame["y"] = ys
            frame.to_parquet(os.path.join(tmp, f"{name}.parquet"), index=False)
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
        peer, peer_out = run([sys.executable, os.path.join(HERE, "peer_tune_keras.py"), "--data", tmp], env)
    print(f"ctrain init + ingest + sweep: {ours:.1f} s")
    print(outs[-1].strip())
    print(f"Ray Tune over Keras fit (the peer): {peer:.1f} s")
    print(peer_out.strip())
    print(f"ctrain is {peer / ours:.1f}x faster")
    what = "tutorial grid 7x5: ctrain init+ingest+sweep vs Ray Tune over Keras fit"
    emit([check(what, peer / ours, 10.0, readme="grid")])


if __name__ == "__main__":
    main()
