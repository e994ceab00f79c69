"""The Python API: the same operations as `ctrain`, for notebooks and pipelines.

    import continual_trainer as ct

    store = ct.init_store("store", "old.parquet", label="y", ignore=["id"])
    store.ingest(new_df)                                  # a DataFrame, an Arrow table or a file
    outcome = store.update("finetune_all", epochs=20)     # strategy parameters as keywords
    scored = store.predict(df)                            # the rows plus `prediction`
    store.history()                                       # a DataFrame, one row per version
    store.rollback()

Every mistake a user can make raises `UserError`: one line, naming this API's arguments
(`ctrain` prints the same line with its flags instead); nothing here starts Ray unless asked
(`ray=True`, `actors=N`). The CLI is a thin layer over this package.

The store's methods live in rooms by use case (`learning`, `serving`, `records`, on the core in
`base`); `stores` creates and opens stores, `tools` needs none.
"""

from continual_trainer.api.learning import Comparison, StreamOptions
from continual_trainer.api.stores import ModelStore, expected_inputs, init_store, open_store
from continual_trainer.api.tools import (
    check_strategy,
    leave_cluster,
    metric_names,
    run_demo,
    split_file,
    strategy_names,
)

__all__ = [
    "Comparison",
    "ModelStore",
    "StreamOptions",
    "check_strategy",
    "expected_inputs",
    "init_store",
    "leave_cluster",
    "metric_names",
    "open_store",
    "run_demo",
    "split_file",
    "strategy_names",
]
