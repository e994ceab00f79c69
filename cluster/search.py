"""Ray Tune's searchers for a sweep's `search.Tpe`: Optuna's TPE through `OptunaSearch`.

The searcher runs in the driver and starts no Ray (Tune's searchers are plain objects);
it lives here because only this layer imports Ray.
"""

from __future__ import annotations

from typing import Any


def optuna_search(space: dict[str, Any], seed: int) -> Any:
    """Tune's `OptunaSearch` over `space` (Optuna distributions by parameter), maximising `score`."""
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(space=space, metric="score", mode="max", seed=seed)
