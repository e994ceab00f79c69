"""The sampling rules: which rows a batch holds out (fixed forever by its id), recency weights,
and importance weights (old rows weighted by how much they resemble the new data)."""

from __future__ import annotations

import numpy as np
import pytest

from continual_trainer.data.sampling import holdout_mask, importance_weights, recency_weights, stable_seed


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


def test_a_batch_holds_out_the_same_rows_in_every_release() -> None:
    """A store written by an older release is judged on the rows it held out then: the seed and
    the mask of a batch id are pinned (a change here silently moves old batches' holdouts)."""
    assert stable_seed("holdout", "000001-abc") == 15141371657524733809
    assert stable_seed(3, "x", 1.5) == 6488752439291533799
    assert np.flatnonzero(holdout_mask("000001-abc", 20, 0.25)).tolist() == [1, 6, 9, 11, 12]


def test_every_batch_keeps_a_row_to_train_on_and_one_to_judge_by() -> None:
    def held(n: int, fraction: float) -> int:
        mask = holdout_mask("b", n, fraction)
        assert mask.shape == (n,) and mask.dtype == np.bool_
        return int(mask.sum())

    assert held(10, 0.0) == 0 and held(10, -0.5) == 0  # no holdout asked: none
    assert held(10, 0.01) == 1  # a tiny fraction still holds one row out
    assert held(5, 1.0) == 4 and held(2, 0.5) == 1  # but never every row
    assert held(1, 0.5) == 0 and held(0, 0.5) == 0  # a single row trains


def test_recency_weights_halve_every_half_life_and_keep_mean_one() -> None:
    w = recency_weights(np.array([0, 1, 2, 2]), half_life=2.0)
    assert w.dtype == np.float32 and float(w.mean()) == pytest.approx(1.0)
    assert float(w[2] / w[0]) == pytest.approx(2.0) and float(w[1] / w[0]) == pytest.approx(2**0.5)
    one = recency_weights(np.array([3]), half_life=1.0)
    assert one.tolist() == [1.0]
    none = recency_weights(np.array([], int), half_life=1.0)
    assert none.shape == (0,) and none.dtype == np.float32


def test_importance_weights_follow_the_density_ratio() -> None:
    """Old rows from N(0, 1), new from N(1, 1): the true ratio p_new(x) / p_old(x) is
    exp(x - 1/2), so log-weights rise with slope 1 in x (a logistic domain classifier is exact here)."""
    rng = np.random.default_rng(5)
    old, new = rng.normal(0, 1, (4000, 1)), rng.normal(1, 1, (4000, 1))
    w = importance_weights(old, new, seed=0, clip=1e6)
    slope = np.polyfit(old[:, 0], np.log(w), 1)[0]
    assert 0.9 < slope < 1.1
    # clipped at both ends before normalising: max / min is clip squared when both bind
    w = importance_weights(old, new, seed=0, clip=2.0)
    assert float(w.max() / w.min()) == pytest.approx(4.0, rel=1e-5)
    empty = importance_weights(np.ones((3, 2)), np.empty((0, 2)), seed=0)
    assert empty.dtype == np.float32


def test_importance_weights_are_clipped_at_twenty_by_default() -> None:
    """Old rows far from the new data hit the lower bound and rows like it the upper one: the
    default clip (20) bounds their ratio by 400."""
    rng = np.random.default_rng(4)
    old = np.concatenate([rng.normal(2.0, 0.5, (10, 3)), rng.normal(-2.0, 0.5, (390, 3))])
    new = rng.normal(2.0, 0.5, (4000, 3))  # far denser where the few near old rows are
    w = importance_weights(old, new, seed=0)
    assert float(w.max() / w.min()) == pytest.approx(400.0, rel=1e-5)
