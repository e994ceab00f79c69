"""Our compiled loop against Keras `fit`, side by side in one process.

1. The reference recipe (tutorial data, Dense 20-10-1, SGD 0.01 momentum 0.9,
   150 epochs, batch 32) over several seeds: wall time and test accuracy of each, against
   `fit` as written by default and against `fit` tuned as Keras's performance advice says
   (`steps_per_execution`, one `fit` over a shuffled, batched, repeated `tf.data` pipeline:
   no per-epoch overhead, many steps per call into the compiled function).
2. Throughput on a large table: our loop reading the rows from Parquet (read time
   included) against `fit` fed from an in-memory numpy array, batch size 256.

Run: .venv/bin/python scripts/bench_loop.py [--seeds 5] [--rows 1000000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from bench_check import check, emit


def keras_fit(model, x, y, epochs: int, batch_size: int, lr: float = 0.01) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss="binary_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)


def tuned_fit(model, x, y, epochs: int, batch_size: int, lr: float = 0.01, steps_per_execution: int = 64) -> None:
    """`fit` as a competent engineer tunes it: the same updates (every epoch's batches, the
    last one partial, reshuffled each epoch), `steps_per_execution` steps per call into the
    compiled train function, and one `fit` over the repeated pipeline."""
    import keras
    import tensorflow as tf

    model.compile(
        optimizer=keras.optimizers.SGD(lr, momentum=0.9),
        loss="binary_crossentropy",
        steps_per_execution=steps_per_execution,
    )
    steps = -(-len(x) // batch_size)
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0, reshuffle_each_iteration=True)
    data = data.batch(batch_size).repeat(epochs).prefetch(tf.data.AUTOTUNE)
    model.fit(data, epochs=1, steps_per_epoch=steps * epochs, verbose=0)


def accuracy(model, x, y) -> float:
    return float(((np.asarray(model(x))[:, 0] > 0.5) == y).mean())


def reference(seeds: int) -> tuple[float, float, float]:
    from continual_trainer.demo import N_FEATURES, reference_data
    from continual_trainer.trainer.loop import LoopConfig, train
    from continual_trainer.trainer.models import ModelSpec, build_model, clone

    data = reference_data()

    def xy(t):
        x = np.stack([t.column(f"x{i}").to_numpy() for i in range(N_FEATURES)], axis=1).astype(np.float32)
        return x, t.column("y").to_numpy().astype(np.int32)

    x, y = xy(data.old)
    xt, yt = xy(data.test)
    # Warm both paths up so one-time process start-up is charged to neither.
    warm = build_model(ModelSpec(), N_FEATURES, 2, 0)
    start = time.perf_counter()
    keras_fit(clone(warm), x, y, 1, 32)
    cold_fit = time.perf_counter() - start
    start = time.perf_counter()
    tuned_fit(clone(warm), x, y, 1, 32)
    cold_tuned = time.perf_counter() - start
    start = time.perf_counter()
    train(warm, x, y, LoopConfig(epochs=1))
    cold_ours = time.perf_counter() - start
    print(
        f"one-time cost of a first call (1 epoch): fit {cold_fit:.2f} s, tuned fit {cold_tuned:.2f} s, "
        f"ours incl. tracing {cold_ours:.2f} s"
    )

    print(f"1. reference recipe: {len(x)} rows, 150 epochs, batch 32, SGD 0.01 momentum 0.9; test {len(xt)} rows")
    heads = ("fit s", "tuned s", "ours s", "ratio", "fit acc", "tuned acc", "ours acc")
    print(f"{'seed':>4} " + " ".join(f"{h:>9}" for h in heads))
    t_fit, t_tuned, t_ours, a_fit, a_tuned, a_ours = [], [], [], [], [], []
    for seed in range(seeds):
        ours = build_model(ModelSpec(), N_FEATURES, 2, seed)
        theirs, tuned = clone(ours), clone(ours)
        start = time.perf_counter()
        keras_fit(theirs, x, y, 150, 32)
        t_fit.append(time.perf_counter() - start)
        start = time.perf_counter()
        tuned_fit(tuned, x, y, 150, 32)
        t_tuned.append(time.perf_counter() - start)
        start = time.perf_counter()
        train(ours, x, y, LoopConfig(), seed=seed)
        t_ours.append(time.perf_counter() - start)
        a_fit.append(accuracy(theirs, xt, yt))
        a_tuned.append(accuracy(tuned, xt, yt))
        a_ours.append(accuracy(ours, xt, yt))
        print(
            f"{seed:>4} {t_fit[-1]:>9.2f} {t_tuned[-1]:>9.2f} {t_ours[-1]:>9.2f} {t_fit[-1] / t_ours[-1]:>9.1f} "
            f"{a_fit[-1]:>9.3f} {a_tuned[-1]:>9.3f} {a_ours[-1]:>9.3f}"
        )
    print(f"total: fit {sum(t_fit):.2f} s, ours {sum(t_ours):.2f} s -> speedup {sum(t_fit) / sum(t_ours):.1f}x")
    tuned_ratio = sum(t_tuned) / sum(t_ours)
    print(f"tuned fit {sum(t_tuned):.2f} s -> ours is {tuned_ratio:.1f}x; its test accuracy {np.mean(a_tuned):.4f}")
    cold = (sum(t_fit) + cold_fit) / (sum(t_ours) + cold_ours)
    print(f"speedup with the one-time first-call costs added to each side: {cold:.1f}x")
    gap = 100 * (np.mean(a_ours) - np.mean(a_fit))
    print(f"mean test accuracy: fit {np.mean(a_fit):.4f}, ours {np.mean(a_ours):.4f} ({gap:+.2f} points)")
    return sum(t_fit) / sum(t_ours), gap, tuned_ratio


def throughput(rows: int, epochs: int) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from continual_trainer.trainer.loop import LoopConfig, train
    from continual_trainer.trainer.models import ModelSpec, build_model, clone

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 20)).astype(np.float32)
    y = (x[:, :5].sum(axis=1) + 0.5 * rng.normal(size=rows) > 0).astype(np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.parquet")
        pq.write_table(pa.table({**{f"x{i}": x[:, i] for i in range(20)}, "y": y}), path)
        print(f"\n2. throughput: {rows:,} rows x 20 features, batch 256, {epochs} epoch(s)")
        ours = build_model(ModelSpec(), 20, 2, 0)
        theirs = clone(ours)
        start = time.perf_counter()
        keras_fit(theirs, x, y, epochs, 256)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        table = pq.read_table(path)
        xp = np.stack([table.column(f"x{i}").to_numpy() for i in range(20)], axis=1).astype(np.float32)
        yp = table.column("y").to_numpy().astype(np.int32)
        read_s = time.perf_counter() - start
        train(ours, xp, yp, LoopConfig(epochs=epochs, batch_size=256))
        ours_s = time.perf_counter() - start
    fit_rate, ours_rate = rows * epochs / fit_s, rows * epochs / ours_s
    print(f"fit (in-memory numpy): {fit_s:.2f} s, {fit_rate:,.0f} rows/s")
    print(f"ours (from Parquet, read {read_s:.2f} s included): {ours_s:.2f} s, {ours_rate:,.0f} rows/s")
    print(f"throughput ratio: {ours_rate / fit_rate:.1f}x")
    print(
        f"train accuracy: fit {accuracy(theirs, x[:100000], y[:100000]):.4f}, "
        f"ours {accuracy(ours, x[:100000], y[:100000]):.4f}"
    )
    return ours_rate / fit_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    speedup, gap, tuned = reference(args.seeds)
    rate = throughput(args.rows, args.epochs)
    emit(
        [
            check("reference recipe: our loop vs fit", speedup, 20.0, readme="loop.reference"),
            check("reference recipe: our loop vs a tuned fit", tuned, 3.0, readme="loop.tuned"),
            check("reference recipe: accuracy points below fit", -gap, 1.0, " points", at_most=True),
            check("rows/s from Parquet vs fit on in-memory numpy", rate, 3.0, readme="loop.parquet"),
        ]
    )


if __name__ == "__main__":
    main()
