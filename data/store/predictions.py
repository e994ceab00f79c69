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
        """Every recorded file of labelled keys."""
        out = []
        for name in self._list_files(_LABELLED):
            if name.endswith(".parquet"):
                try:
                    out.append(self._read(f"{_LABELLED}/{name}"))
                except FileNotFoundError:
                    continue
        return out
