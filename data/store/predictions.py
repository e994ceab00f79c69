"""The predictions repository: the prediction log `ctrain serve` writes, and the keys of logged
rows whose labels were joined into a batch (`ctrain label`)."""

from __future__ import annotations

import uuid

from continual_trainer.data.store.core import StorageCore, utc_stamp

_LOG = "predictions/log"
_LABELLED = "predictions/labelled"


class Predictions(StorageCore):
    """The prediction log (Parquet files, each written whole) and the labelled keys."""

    def write_prediction_log(self, data: bytes) -> str:
        """Keep one Parquet file of logged predictions; return its name. Names sort by time."""
        name = f"{utc_stamp()}-{uuid.uuid4().hex[:8]}.parquet"
        self._write(f"{_LOG}/{name}", data)
        return name

    def prediction_logs(self) -> list[str]:
        """The prediction log's files, oldest first."""
        return [n for n in self._list_files(_LOG) if n.endswith(".parquet")]

    def read_prediction_log(self, name: str) -> bytes:
        return self._read(f"{_LOG}/{name}")

    def record_labelled(self, batch_id: str, data: bytes) -> None:
        """Keep the keys (a Parquet file) whose labels went into `batch_id`."""
        self._write(f"{_LABELLED}/{batch_id}.parquet", data)

    def labelled(self) -> list[bytes]:
        """Every recorded file of labelled keys whose batch exists (a record without its batch is
        the leftover of a `label` that died between the two writes: it counts for nothing)."""
        out = []
        batches = set(self.batch_ids())  # type: ignore[attr-defined]
        for name in self._list_files(_LABELLED):
            if name.endswith(".parquet") and name[: -len(".parquet")] in batches:
                try:
                    out.append(self._read(f"{_LABELLED}/{name}"))
                except FileNotFoundError:
                    continue
        return out

    def verify_predictions(self, batches: set[str]) -> list[str]:
        """Problems of the prediction log and the labelled keys: a file that is not Parquet, a
        record of labelled keys whose batch is missing."""
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        problems = []
        for folder, names in ((_LOG, self.prediction_logs()), (_LABELLED, self._list_files(_LABELLED))):
            for name in names:
                try:
                    pq.read_metadata(io.BytesIO(self._read(f"{folder}/{name}")))
                except FileNotFoundError:
                    continue
                except (pa.ArrowException, OSError) as exc:
                    problems.append(f"{folder}/{name} is not a readable Parquet file ({type(exc).__name__})")
        for name in self._list_files(_LABELLED):
            if name.endswith(".parquet") and name[: -len(".parquet")] not in batches:
                problems.append(
                    f"{_LABELLED}/{name} records labelled keys of a batch the store lacks (a label that died "
                    "half-way: its keys count for nothing; delete the file or label again)"
                )
        return problems
