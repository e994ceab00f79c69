"""The compiled loop on models beyond Dense stacks, against Keras `fit`, side by side in one process.

1. The reference recipe (tutorial data, Dense 20-10-1, SGD 0.01 momentum 0.9, 150 epochs,
   batch 32) over several seeds, trained by the Dense fast path (what `mlp:` stores use) and
   by the general path (the model's own call; the same network wrapped so the fast path
   does not apply): time and test accuracy against `fit`.
2. A small CNN (two Conv2D layers, max pooling) on scikit-learn's 8x8 digits, 30 epochs,
   batch 32, over several seeds.
3. A network with BatchNormalization and Dropout on the digits, 30 epochs, over seeds.
Each model starts from the same weights on both sides; every first call (tracing,
Keras's own set-up) is charged to its side.

Run: .venv/bin/python scripts/bench_models.py [--seeds 5] [--image-seeds 3]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from bench_check import check, emit


def keras_fit(model, x, y, epochs: int, batch_size: int, lr: float, loss: str) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss=loss)
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)


def twin(model):
    import keras

    other = keras.models.clone_model(model)
    other.set_weights(model.get_weights())
    return other


def predicted(model, x) -> np.ndarray:
    p = np.asarray(model(x, training=False))
    return (p[:, 0] > 0.5).astype(int) if p.shape[1] == 1 else p.argmax(axis=1)


def compare(title: str, make, x, y, xt, yt, seeds: int, epochs: int, lr: float, loss: str) -> tuple[float, float]:
    from continual_trainer.trainer.loop import LoopConfig, train

    print(f"\n{title}")
    # A 1-epoch first call on each side, charged separately: Keras's set-up and our tracing
    # happen once per architecture in a process (bench_loop.py measures the same way).
    warm = make(seeds)
    start = time.perf_counter()
    keras_fit(twin(warm), x, y, 1, 32, lr, loss)
    cold_fit = time.perf_counter() - start
    start = time.perf_counter()
    train(warm, x, y, LoopConfig(epochs=1, batch_size=32, learning_rate=lr))
    cold_ours = time.perf_counter() - start
    print(f"first call (1 epoch): fit {cold_fit:.2f} s, ours incl. tracing {cold_ours:.2f} s")
    print(f"{'seed':>4} {'fit s':>8} {'ours s':>8} {'ratio':>6} {'fit acc':>8} {'ours acc':>9}")
    t_fit, t_ours, a_fit, a_ours = [], [], [], []
    for seed in range(seeds):
        ours = make(seed)
        theirs = twin(ours)
        start = time.perf_counter()
        keras_fit(theirs, x, y, epochs, 32, lr, loss)
        t_fit.append(time.perf_counter() - start)
        start = time.perf_counter()
        train(ours, x, y, LoopConfig(epochs=epochs, batch_size=32, learning_rate=lr), seed=seed)
        t_ours.append(time.perf_counter() - start)
        a_fit.append(float((predicted(theirs, xt) == yt).mean()))
        a_ours.append(float((predicted(ours, xt) == yt).mean()))
        print(
            f"{seed:>4} {t_fit[-1]:>8.2f} {t_ours[-1]:>8.2f} {t_fit[-1] / t_ours[-1]:>6.1f} "
            f"{a_fit[-1]:>8.3f} {a_ours[-1]:>9.3f}"
        )
    gap = 100 * (np.mean(a_ours) - np.mean(a_fit))
    cold = (sum(t_fit) + cold_fit) / (sum(t_ours) + cold_ours)
    print(
        f"total: fit {sum(t_fit):.2f} s, ours {sum(t_ours):.2f} s -> {sum(t_fit) / sum(t_ours):.1f}x "
        f"({cold:.1f}x with the first calls added to each side); "
        f"mean test accuracy fit {np.mean(a_fit):.4f}, ours {np.mean(a_ours):.4f} ({gap:+.2f} points)"
    )
    return sum(t_fit) / sum(t_ours), gap


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--image-seeds", type=int, default=3)
    args = p.parse_args()

    import keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from continual_trainer.demo import N_FEATURES, reference_data
    from continual_trainer.trainer.models import ModelSpec, build_model

    data = reference_data()

    def xy(t):
        x = np.stack([t.column(f"x{i}").to_numpy() for i in range(N_FEATURES)], axis=1).astype(np.float32)
        return x, t.column("y").to_numpy().astype(np.int32)

    x, y = xy(data.old)
    xt, yt = xy(data.test)

    def mlp(seed: int):
        return build_model(ModelSpec(), N_FEATURES, 2, seed)

    def mlp_general(seed: int):  # the same network, not a pure Dense stack: the general path trains it
        fast = mlp(seed)
        inp = keras.Input((N_FEATURES,))
        h = inp
        for layer in fast.layers:
            h = layer.__class__.from_config(layer.get_config())(h)
        model = keras.Model(inp, keras.layers.Activation("linear")(h))
        model.set_weights(fast.get_weights())
        return model

    recipe = "150 epochs, batch 32, SGD 0.01 momentum 0.9"
    compare(f"1a. reference MLP, Dense fast path ({len(x)} rows, {recipe})", mlp, x, y, xt, yt, args.seeds, 150, 0.01,
            "binary_crossentropy")  # fmt: skip
    general = compare("1b. reference MLP, general path (the model's own call)", mlp_general, x, y, xt, yt,
                      args.seeds, 150, 0.01, "binary_crossentropy")  # fmt: skip

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    xi, xit, yi, yit = train_test_split(images, digits.target.astype(np.int32), test_size=0.3, random_state=0)
    init = keras.initializers.GlorotUniform

    def cnn(seed: int):
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init(seed)),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(32, 3, padding="same", activation="relu", kernel_initializer=init(seed + 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(10, activation="softmax", kernel_initializer=init(seed + 2)),
            ]
        )

    def bn_dropout(seed: int):
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(64, kernel_initializer=init(seed)),
                keras.layers.BatchNormalization(),
                keras.layers.Activation("relu"),
                keras.layers.Dropout(0.3, seed=seed),
                keras.layers.Dense(32, kernel_initializer=init(seed + 1)),
                keras.layers.BatchNormalization(),
                keras.layers.Activation("relu"),
                keras.layers.Dropout(0.3, seed=seed + 1),
                keras.layers.Dense(10, activation="softmax", kernel_initializer=init(seed + 2)),
            ]
        )

    loss = "sparse_categorical_crossentropy"
    conv = compare(f"2. CNN, two Conv2D, digits 8x8 ({len(xi)} rows, 30 epochs, batch 32, SGD 0.01)", cnn,
                   xi, yi, xit, yit, args.image_seeds, 30, 0.01, loss)  # fmt: skip
    norm = compare("3. Dense + BatchNormalization + Dropout, digits (30 epochs)", bn_dropout, xi, yi, xit, yit,
            args.image_seeds, 30, 0.01, loss)  # fmt: skip
    emit(
        [
            check("reference MLP, general path: accuracy points below fit", -general[1], 1.0, " points", at_most=True),
            check("CNN on digits: our loop vs fit", conv[0], 1.5, readme="models.cnn"),
            check("CNN on digits: accuracy points below fit", -conv[1], 1.0, " points", at_most=True),
            check("Dense + BatchNormalization + Dropout: accuracy points below fit", -norm[1], 1.0, " points",
                  at_most=True),
        ]
    )  # fmt: skip


if __name__ == "__main__":
    main()
