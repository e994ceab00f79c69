"""The API's front door: a store created, opened, or asked what it feeds a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from continual_trainer.api.base import _reporting, _source, _table
from continual_trainer.api.learning import Learning
from continual_trainer.api.records import Records
from continual_trainer.api.serving import Serving
from continual_trainer.data.errors import UserError

if TYPE_CHECKING:
    import keras


class ModelStore(Learning, Serving, Records):
    """A store of labelled batches and model versions, and what can be done with it: its
    methods are grouped by use case (`Learning`: update, compare, sweep, stream, drift;
    `Serving`: predict, serve, label, export; `Records`: ingest, batches, versions, reports,
    promotions).

    Attributes:
        uri: where the store is (an absolute path for a local folder).
        last_outcome: what the last `update` (or `init_store`) of this object produced.
    """


def init_store(
    uri: str,
    data: Any,
    label: str,
    *,
    model: str | keras.Model = "mlp:20,10",
    features: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    task: str | None = None,
    train: bool = False,
    epochs: int = 150,
    batch_size: int = 32,
    learning_rate: float = 0.01,
    holdout: float = 0.2,
    seed: int = 0,
    mlflow: str | None = None,
    mlflow_model: str | None = None,
    progress: bool = False,
) -> ModelStore:
    """Create a store from a first labelled batch and train (or import) its first model.

    Args:
        uri: a local folder or `s3://bucket/prefix` (any pyarrow filesystem URI).
        data: the first batch: a Parquet file or URI, an Arrow table or a pandas DataFrame.
        label: the label column.
        model: `mlp:UNITS,...`, a builder `package.module:function`, or a trained model to
            import as the first version (trained first if `train`): a `keras.Model` or a
            `.keras` file. Its adapted preprocessing comes along; a model with one input per
            numeric column is fed that way (`expected_inputs` shows what a store feeds).
        features, ignore: which columns are features (names or patterns); the other columns
            are kept in the store and passed through by `predict`, never trained on.
        shapes: tensor shapes of list columns, e.g. `{"image": (8, 8, 1)}`.
        task: `classification` or `regression` (default: from the label).
        epochs, batch_size, learning_rate: how the first model trains.
        holdout: the fraction of every batch held out for evaluation.
        seed: fixes initialisation, sampling and shuffling.
        mlflow, progress, mlflow_model: as for `open_store`, for this store's later updates and sweeps
            (the first model trains with progress too).

    Returns:
        The store, with `last_outcome` set to the first version's outcome.
    """
    from continual_trainer.store_setup import init_store as init
    from continual_trainer.trainer.loop import LoopConfig

    source, raw = _source(data)
    try:
        loop = LoopConfig(epochs, batch_size, learning_rate)
    except ValueError as exc:
        raise UserError(f"init: {exc}") from None
    with _reporting("init", progress):
        outcome = init(
            uri,
            source,
            label,
            model=model,
            loop=loop,
            seed=seed,
            holdout_fraction=holdout,
            shapes=shapes,
            task=task,
            train_imported=train,
            features=features,
            ignore=ignore,
            data=raw,
        )
    store = open_store(uri, mlflow=mlflow, progress=progress, mlflow_model=mlflow_model)
    store.last_outcome = outcome
    if store._mirror is not None:  # the first version: registered, and the champion
        store._mirror.log_update(outcome, {}, "init")
    return store


def expected_inputs(
    store: str | None = None,
    *,
    data: Any = None,
    label: str | None = None,
    per_column: bool = False,
    features: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The inputs a store feeds a model, by input name, each with its shape, dtype, the columns
    it holds and the `keras.Input(...)` line that takes it; before a store exists, what a first
    batch `data` with `label` would give (`per_column`: one input per numeric column, the
    layout a model built that way gets)."""
    from continual_trainer.store_setup import expected_inputs as expected

    if store is not None:
        return expected(store)
    if data is None or label is None:
        raise UserError("expected_inputs: give a store, or data and label")
    layout = "columns" if per_column else "grouped"
    source, table = (data, None) if isinstance(data, str) else ("data", _table(data))
    return expected(
        data=source, table=table, label=label, layout=layout, features=features, ignore=ignore, shapes=shapes
    )


def open_store(
    uri: str,
    *,
    mlflow: str | None = None,
    progress: bool = False,
    mlflow_from_env: bool = False,
    mlflow_model: str | None = None,
) -> ModelStore:
    """Open an existing store; UserError if there is none at `uri`.

    Args:
        mlflow: an MLflow tracking URI to mirror updates and sweeps to (needs the `mlflow`
            extra; e.g. `sqlite:///mlflow.db`); MLFLOW_TRACKING_URI is not read here: a notebook
            says what it wants. Each version's model is registered, and the current one carries
            the alias `champion`, moved by every promotion and rollback.
        progress: report epochs and trials on stderr, as `ctrain` does.
        mlflow_model: the registered model's name (default `ctrain-<the store's folder name>`).
    """
    from continual_trainer.data.storage import Store

    return ModelStore(
        Store.open(uri).uri,
        mlflow=mlflow,
        progress=progress,
        mlflow_from_env=mlflow_from_env,
        mlflow_model=mlflow_model,
    )
