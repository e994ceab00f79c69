"""`importance_weights`: old rows weighted by how much they resemble the new data (recency
weights are tested in test_store.py)."""

from __future__ import annotations

import numpy as np

from continual_trainer.data.sampling import importance_weights


def _old_and_new(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Old rows: half where the new data is (around +2), half far from it (around -2)."""
    rng = np.random.default_rng(seed)
    near = rng.normal(2.0, 0.5, (200, 3))
    far = rng.normal(-2.0, 0.5, (200, 3))
    new = rng.normal(2.0, 0.5, (150, 3))
    return np.concatenate([near, far]), new, np.r_[np.ones(200, bool), np.zeros(200, bool)]


def test_old_rows_like_the_new_data_weigh_more_than_rows_unlike_it() -> None:
    old, new, near = _old_and_new()
    w = importance_weights(old, new, seed=0)
    assert w.shape == (400,) and w.dtype == np.float32
    assert abs(float(w.mean()) - 1) < 1e-5
    assert w[near].min() > w[~near].max()  # every row like the new data above every row unlike it
    assert w[near].mean() > 10 * w[~near].mean()


def test_importance_weights_are_clipped_before_they_are_normalised() -> None:
    old, new, _ = _old_and_new()
    for clip in (2.0, 20.0):
        w = importance_weights(old, new, seed=0, clip=clip)
        assert float(w.max() / w.min()) <= clip * clip * (1 + 1e-5)
    assert float(w.max() / w.min()) > 4.0 * (1 + 1e-5)  # clip=20 lets the ratio go past clip=2's bound


def test_old_data_drawn_like_the_new_data_keeps_nearly_equal_weights() -> None:
    rng = np.random.default_rng(1)
    w = importance_weights(rng.normal(0, 1, (500, 4)), rng.normal(0, 1, (500, 4)), seed=0)
    assert float(w.std()) < 0.2 and abs(float(w.mean()) - 1) < 1e-5


def test_importance_weights_without_rows_or_columns_are_ones() -> None:
    rows = np.ones((5, 3))
    assert np.array_equal(importance_weights(rows, np.empty((0, 3)), seed=0), np.ones(5))
    assert importance_weights(np.empty((0, 3)), rows, seed=0).shape == (0,)
    assert np.array_equal(importance_weights(np.ones((5, 0)), np.ones((4, 0)), seed=0), np.ones(5))


def test_importance_weights_are_the_same_for_the_same_seed() -> None:
    old, new, _ = _old_and_new(seed=3)
    assert np.array_equal(importance_weights(old, new, seed=7), importance_weights(old, new, seed=7))
