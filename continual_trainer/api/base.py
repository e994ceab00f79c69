"""What every room of the API's store stands on: the store object's core (where it is, its
MLflow mirror, progress) and the conversions the rooms share (a DataFrame or table to a batch,
the promotion arguments to one `Promotion` value, a memory budget)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from continual_trainer.data.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa

    from continual_trainer.data.schema import Schema
    from continual_trainer.promotion import UpdateOutcome


class StoreBase:
    """A store of labelled batches and model versions (`ModelStore`'s core, which its rooms
    share).

    Attributes:
        uri: where the store is (an absolute path for a local folder).
        last_outcome: what the last `update` (or `init_store`) of this object produced.
    """

    def __init__(
        self,
        uri: str,
        *,
        mlflow: str | None = None,
        progress: bool = False,
        mlflow_from_env: bool = False,
        mlflow_model: str | None = None,
    ) -> None:
        self.uri = uri
        self.last_outcome: UpdateOutcome | None = None
        self._given_mirror = None
        self._resolved_mirror: Any = False  # not looked up yet
        if mlflow or mlflow_from_env:  # from the environment: MLFLOW_TRACKING_URI if MLflow is installed
            from continual_trainer.tracking import mirror_for

            self._given_mirror = mirror_for(mlflow, uri, mlflow_model)
        self._progress = progress

    @property
    def _mirror(self) -> Any:
        """Where promotions and runs are mirrored: the MLflow tracking store given (recorded in
        the store the first time), else the one the store recorded, else None. Looked up when a
        command first has something to mirror (reading the store, maybe reaching MLflow)."""
        if self._resolved_mirror is False:
            from continual_trainer.tracking import record, recorded_mirror

            if self._given_mirror is not None:
                record(self._store(), self._given_mirror)
                self._resolved_mirror = self._given_mirror
            else:
                self._resolved_mirror = recorded_mirror(self._store(), self.uri)
        return self._resolved_mirror

    def _reporting(self, command: str) -> Any:
        return _reporting(command, self._progress)

    def __repr__(self) -> str:
        return f"ModelStore({self.uri!r}, current={self.current!r})"

    def _store(self) -> Any:
        from continual_trainer.data.storage import Store

        return Store.open(self.uri)

    @property
    def current(self) -> str | None:
        """The current (promoted) version's id."""
        return self._store().current()

    @property
    def schema(self) -> Schema:
        """The store's columns, label, classes and task."""
        return self._store().schema

    def resolve(self, ref: str) -> str:
        """The version id a reference names: an id, `current`, `parent`, or a unique prefix or suffix."""
        return self._store().resolve(ref)

    @property
    def display(self) -> str:
        """The store's location for messages (credentials removed)."""
        from continual_trainer.data.parquet import redact

        return redact(self.uri)


def _reporting(command: str, progress: bool) -> Any:
    """Progress on stderr for one call if asked; otherwise whatever reporter the caller has
    open stays (`ctrain` opens one for every command)."""
    import contextlib

    from continual_trainer.trainer.progress import Reporter, reporting

    return reporting(Reporter(command)) if progress else contextlib.nullcontext()


def _is_pandas(data: Any) -> bool:
    return type(data).__module__.startswith("pandas")


def _table(data: Any) -> pa.Table:
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    if _is_pandas(data):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise UserError(f"expected a Parquet path, an Arrow table or a pandas DataFrame, got {type(data).__name__}")


def _source(data: Any) -> tuple[str, bytes | None]:
    """A batch as (its name for messages and records, its Parquet bytes or None to read the file)."""
    return (data, None) if isinstance(data, str) else _encoded(data)


def _encoded(data: Any) -> tuple[str, bytes]:
    """A batch given as a table or DataFrame: (its name for messages and records, its Parquet bytes)."""
    from continual_trainer.data.parquet import table_to_bytes

    return f"{type(data).__name__.lower()}.parquet", table_to_bytes(_table(data))


def _names_a_file(text: str) -> bool:
    """A one-line config that names a file (a YAML path or a URI) rather than holding YAML."""
    return text.endswith((".yaml", ".yml")) or "://" in text


def _promotion(mode: str, on: str, max_forgetting: float | None, max_flip_rate: float | None) -> Any:
    """The API's promotion arguments as the one `Promotion` value passed down."""
    from continual_trainer.promotion import Promotion
    from continual_trainer.trainer.forgetting import Gate

    return Promotion(mode, on, Gate(max_forgetting, max_flip_rate))


def _budget(memory_budget: int | str | None) -> int | None:
    from continual_trainer.trainer.params import parse_size

    try:
        return None if memory_budget is None else parse_size(memory_budget)
    except ValueError as exc:
        raise UserError(f"memory_budget: {exc}") from None
