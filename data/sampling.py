"""Holdout splits, row sampling and instance weights: deterministic given a seed."""

from __future__ import annotations

import hashlib

import numpy as np


def stable_seed(*parts: object) -> int:
    """A seed from values, the same in every process (unlike `hash`)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def holdout_mask(batch_id: str, n: int, fraction: float) -> np.ndarray:
    """Which rows of a batch are held out for evaluation.

    Fixed by the batch id alone, so every strategy, seed and later update is
    scored on the same rows and never trains on them.
    """
    if fraction <= 0:
        return np.zeros(n, bool)
    rng = np.random.default_rng(stable_seed("holdout", batch_id))
    mask = np.zeros(n, bool)
    k = min(n - 1, max(1, round(n * fraction))) if n > 1 else 0
    mask[rng.choice(n, size=k, replace=False)] = True
    return mask


def recency_weights(order: np.ndarray, half_life: float) -> np.ndarray:
    """Weights halving every `half_life` batches back from the newest; mean 1."""
    if len(order) == 0:
        return np.ones(0, np.float32)
    age = order.max() - order
    w = np.power(0.5, age / half_life)
    return (w / w.mean()).astype(np.float32)


def importance_weights(x_old: np.ndarray, x_new: np.ndarray, seed: int, clip: float = 20.0) -> np.ndarray:
    """Weights for old rows that make them look like the new data.

    A logistic-regression domain classifier tells new rows from old; an old row's
    weight is its estimated density ratio p(new | x) / p(old | x), scaled by the
    class sizes, clipped to `clip`, then normalised to mean 1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(x_old) == 0 or len(x_new) == 0 or x_old.shape[1] == 0:
        return np.ones(len(x_old), np.float32)
    x = np.concatenate([x_old, x_new])
    d = np.concatenate([np.zeros(len(x_old)), np.ones(len(x_new))])
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(max_iter=500, random_state=seed % (2**32)).fit(scaler.transform(x), d)
    p_new = clf.predict_proba(scaler.transform(x_old))[:, 1]
    ratio = p_new / np.clip(1 - p_new, 1e-6, None) * (len(x_old) / len(x_new))
    w = np.clip(ratio, 1 / clip, clip)
    return (w / w.mean()).astype(np.float32)
