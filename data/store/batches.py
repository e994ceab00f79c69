"""The batches repository: accepted Parquet files, each under its sequence number and sha256,
committed by its marker; retired batches; the quarantine of rejected input."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow.fs as pafs

from continual_trainer.data import failpoints
from continual_trainer.data.errors import UserError
from continual_trainer.data.store.core import StorageCore, sha256, utc_stamp

log = logging.getLogger("continual_trainer.data.storage")

_BATCH_MARKER, _BATCH_OWNER, _RETIRED = "batch.json", ".claim", "retired.json"


_BLOCK = 8 << 20  # bytes read at a time when checking a batch's sha256


_VERIFIED: set[tuple[Any, ...]] = set()  # batch files checked in this process (uri, id, size, mtime)


def verified() -> frozenset[tuple[Any, ...]]:
    """The batch files this process has checked against their sha256 (see `Store.open_batch`),
    to hand to workers that read the same files (`trust`)."""
    return frozenset(_VERIFIED)


def trust(files: Iterable[tuple[Any, ...]]) -> None:
    """Count batch files another process of this job checked (`verified`) as checked; a file
    changed since, in size or modification time, is checked again."""
    _VERIFIED.update(files)


def batch_name(seq: int, data: bytes) -> str:
    """The id of the `seq`-th batch (1 is the first) holding `data`: sortable, and naming its content."""
    return f"{seq:06d}-{sha256(data)[:12]}"


class Batches(StorageCore):
    """Batches and the quarantine."""

    def batch_ids(self) -> list[str]:
        """Committed batches in ingestion order."""
        return [b for b in self._list_dirs("batches") if self._exists(f"batches/{b}/{_BATCH_MARKER}")]

    def retire_batch(self, batch_id: str, reason: str = "") -> bool:
        """Mark a committed batch as never to be trained on or scored again (`ctrain drop`); its
        bytes stay as they are, and so does every version's record of having seen it. False if
        it was retired already. Recorded in the event log."""
        self.batch_info(batch_id)  # UserError unless committed
        record = {"time": dt.datetime.now(dt.timezone.utc).isoformat(), "reason": reason}
        if not self._create_exclusive(f"batches/{batch_id}/{_RETIRED}", json.dumps(record).encode()):
            return False
        self.record_event("drop", {"batch": batch_id, "reason": reason})
        return True

    def retired_batches(self) -> dict[str, dict[str, Any]]:
        """Retired batches (see `retire_batch`) with when and why."""
        out = {}
        for batch_id in self.batch_ids():
            if self._exists(f"batches/{batch_id}/{_RETIRED}"):
                try:
                    out[batch_id] = dict(self._read_json(f"batches/{batch_id}/{_RETIRED}"))
                except (UserError, ValueError, TypeError):  # still retired: a damaged record never revives a batch
                    out[batch_id] = {"reason": "(its record is damaged)", "damaged": True}
        return out

    def batch_info(self, batch_id: str) -> dict[str, Any]:
        """A committed batch's record: sha256, rows, source, ingestion time."""
        rel = f"batches/{batch_id}/{_BATCH_MARKER}"
        try:
            info = self._read_json(rel)
        except FileNotFoundError:
            raise UserError(f"{self.display}: no batch {batch_id}") from None
        if not (isinstance(info, dict) and isinstance(info.get("sha256"), str) and isinstance(info.get("rows"), int)):
            raise UserError(f"{self.display}: {rel} is damaged (expected an object with sha256 and rows)")
        return info

    def batch_rows(self, batch_id: str) -> int:
        """A committed batch's row count, read once per store object (batches never change)."""
        if batch_id not in self._rows:
            self._rows[batch_id] = int(self.batch_info(batch_id)["rows"])
        return self._rows[batch_id]

    def find_batch(self, digest: str) -> str | None:
        """The committed batch holding exactly these bytes (by sha256), if any."""
        return next(
            (b for b in self.batch_ids() if b.endswith("-" + digest[:12]) and self.batch_info(b)["sha256"] == digest),
            None,
        )

    def add_batch(self, data: bytes, info: dict[str, Any]) -> tuple[str, bool]:
        """Keep `data` (Parquet bytes, unaltered) as the next batch, unless the store holds it.

        Returns the batch id and whether it was added. Under the store's batch lock, so
        any number of concurrent calls with the same bytes store exactly one copy.
        """
        digest = sha256(data)
        with self.lock("batches"):
            existing = self.find_batch(digest)
            if existing:
                return existing, False
            failpoints.reached("ingest.after-check")
            self._remove_uncommitted("batches", _BATCH_MARKER, _BATCH_OWNER)
            taken = self._list_dirs("batches")
            seq = max((int(b.split("-", 1)[0]) for b in taken if b.split("-", 1)[0].isdigit()), default=0) + 1
            batch_id = batch_name(seq, data)
            folder = f"batches/{batch_id}"
            if not self._claim(folder, _BATCH_OWNER):
                raise RuntimeError(f"batch folder {batch_id} exists although the batch lock is held")
            with self._abandon_on_failure(folder):
                self._write(f"{folder}/data.parquet", data)
                failpoints.reached("ingest.after-data")
                record = {**info, "id": batch_id, "sha256": digest, "bytes": len(data)}
                self._write_json(f"{folder}/{_BATCH_MARKER}", record)
        return batch_id, True

    def read_batch(self, batch_id: str) -> bytes:
        """A batch's Parquet bytes, refused unless they match the recorded sha256."""
        info = self.batch_info(batch_id)
        try:
            data = self._read(f"batches/{batch_id}/data.parquet")
        except FileNotFoundError:
            raise UserError(f"{self.display}: batch {batch_id} has lost its data.parquet") from None
        if sha256(data) != info["sha256"]:
            raise UserError(f"{self.display}: batch {batch_id} fails its sha256 check; the file was altered")
        return data

    def open_batch(self, batch_id: str) -> Any:
        """A batch's Parquet file opened for reading in pieces (a pyarrow random-access file),
        after checking its sha256 by reading it through once in blocks, never whole."""
        info = self.batch_info(batch_id)
        p = self._path(f"batches/{batch_id}/data.parquet")
        try:
            stat = self._fs.get_file_info(p)
            if stat.type == pafs.FileType.NotFound:
                raise FileNotFoundError(p)
            key = (self.uri, batch_id, stat.size, stat.mtime_ns)  # checked again if the file changed
            if key not in _VERIFIED:
                digest = hashlib.sha256()
                with self._fs.open_input_stream(p) as f:
                    while block := f.read(_BLOCK):
                        digest.update(block)
                if digest.hexdigest() != info["sha256"]:
                    raise UserError(f"{self.display}: batch {batch_id} fails its sha256 check; the file was altered")
                _VERIFIED.add(key)
            return self._fs.open_input_file(p)
        except FileNotFoundError:
            raise UserError(f"{self.display}: batch {batch_id} has lost its data.parquet") from None

    def quarantine(self, name: str, data: bytes, reason: str) -> str:
        """Keep rejected input as it came, with the reason; return the folder's name."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:80] or "input"
        folder = f"{utc_stamp()}-{uuid.uuid4().hex[:4]}-{safe}"
        for earlier in self._list_dirs("quarantine") if self._local else []:
            self._remove_dead_temporaries(self._path(f"quarantine/{earlier}"))
        self._write(f"quarantine/{folder}/{safe}", data)
        self._write(f"quarantine/{folder}/reason.txt", (reason + "\n").encode())
        return f"quarantine/{folder}"

    def quarantined(self) -> list[tuple[str, bytes, str]]:
        """Every quarantined input, oldest first: (file name, bytes as received, reason)."""
        out = []
        for folder in self._list_dirs("quarantine"):
            names = [n for n in self._list_files(f"quarantine/{folder}") if n != "reason.txt"]
            for name in names:
                reason = self._read(f"quarantine/{folder}/reason.txt").decode(errors="replace").strip()
                out.append((name, self._read(f"quarantine/{folder}/{name}"), reason))
        return out
