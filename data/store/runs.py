"""The runs repository: sweeps (spec, trial records, results and reports), reports, and the
stream's markers and events."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow.fs as pafs

from continual_trainer.data.errors import UserError
from continual_trainer.data.parquet import HOST
from continual_trainer.data.store.core import _GRACE_SECONDS, _VERSION_ID, StorageCore, utc_stamp

log = logging.getLogger("continual_trainer.data.storage")

# The fields readers of these records rely on, with their JSON types (None: may be null). A
# record that has one of them of another type was damaged or written by hand: it is skipped
# with one warning naming it, never a crash (a stream restarted on it would crash again).
_OPTIONAL_STR = (str, type(None))


_EVENT_FIELDS: dict[str, Any] = {
    "file": str,
    "sha256": str,
    "status": str,
    "batch": _OPTIONAL_STR,
    "rows": int,
    "drift": dict,
    "strategy": _OPTIONAL_STR,
    "version": _OPTIONAL_STR,
    "promoted": bool,
    "reason": str,
    "seconds": (int, float),
    "triggers": dict,
    "since_update": dict,
    "candidates": list,
    "update_gain": (int, float, type(None)),
    "judged_by": _OPTIONAL_STR,
    "learned": list,
}


_TRIAL_FIELDS: dict[str, Any] = {"trial_id": str, "strategy": str, "params": str, "seed": int}


_WARNED: set[str] = set()


def _shaped(record: Any, fields: Mapping[str, Any], name: str) -> bool:
    """Whether `record` is an object whose known fields have their types; warns once if not."""
    problem = "" if isinstance(record, dict) else f"a {type(record).__name__}, not an object"
    for key, kind in fields.items():
        if problem:
            break
        if key in record and (not isinstance(record[key], kind) or (kind is int and isinstance(record[key], bool))):
            problem = f"its {key!r} is a {type(record[key]).__name__}"
    if problem and name not in _WARNED:
        _WARNED.add(name)
        log.warning("%s is damaged (%s); skipped", name, problem)
    return not problem


class Runs(StorageCore):
    """Sweeps, reports and the stream."""

    def write_sweep_spec(self, sweep_id: str, text: str) -> None:
        self._write(f"sweeps/{sweep_id}/sweep.yaml", text.encode())

    def sweep_spec(self, sweep_id: str) -> str | None:
        """The spec a sweep ran with, or None if there is no such sweep."""
        if not _VERSION_ID.fullmatch(sweep_id) or sweep_id.startswith("."):
            return None
        try:
            return self._read(f"sweeps/{sweep_id}/sweep.yaml").decode(errors="replace")
        except FileNotFoundError:
            return None

    def write_trial_record(self, sweep_id: str, trial_id: str, record: dict[str, Any]) -> None:
        """Record one finished trial (atomically: a record is whole or absent)."""
        self._write(f"sweeps/{sweep_id}/trials/{trial_id}.json", json.dumps(record, sort_keys=True).encode())

    def trial_records(self, sweep_id: str) -> dict[str, dict[str, Any]]:
        """Every recorded trial of a sweep, by trial id; a damaged record is skipped (and redone)."""
        out = {}
        for name in self._list_files(f"sweeps/{sweep_id}/trials"):
            if name.endswith(".json"):
                try:
                    record = self._read_json(f"sweeps/{sweep_id}/trials/{name}")
                except (FileNotFoundError, UserError):
                    continue
                if _shaped(record, _TRIAL_FIELDS, f"sweeps/{sweep_id}/trials/{name}"):
                    out[name[: -len(".json")]] = record
        return out

    def write_report(self, report_id: str, files: dict[str, bytes], folder: str = "sweeps") -> str:
        """Write a report's files (results, Markdown, plots) under `<folder>/<report_id>/`
        (`sweeps` or `reports`); return where it is, fit to print."""
        for name, data in files.items():
            self._write(f"{folder}/{report_id}/{name}", data)
        return self._where(f"{folder}/{report_id}")

    def report_files(self, report_id: str) -> list[str]:
        """The files under `sweeps/<report_id>/`, relative to it (e.g. `plots/x.png`)."""
        base = self._path(f"sweeps/{report_id}")
        sel = pafs.FileSelector(base, allow_not_found=True, recursive=True)
        return sorted(i.path[len(base) + 1 :] for i in self._fs.get_file_info(sel) if i.type == pafs.FileType.File)

    def stream_marker(self, digest: str) -> dict[str, Any] | None:
        """The event recorded for the inbox file with this sha256, or None if it was never finished."""
        try:
            record = self._read_json(f"stream/processed/{digest}.json")
        except FileNotFoundError:
            return None
        except UserError:  # damaged, but there: the file was processed
            return {}
        return record if isinstance(record, dict) else {}

    def record_stream_event(self, digest: str, event: dict[str, Any]) -> None:
        """Keep one stream event, then the file's marker (written last: the file is done)."""
        body = json.dumps(event, sort_keys=True, default=str).encode()
        self._write(f"stream/events/{utc_stamp()}-{digest[:12]}.json", body)
        self._write(f"stream/processed/{digest}.json", body)

    def claim_stream_file(self, digest: str) -> bool:
        """Claim the inbox file with this sha256 for this process; False if a live process has it.

        So that two streams on one inbox never process the same file at once.
        """
        rel = f"stream/claims/{digest}.json"
        me = json.dumps({"host": HOST, "pid": os.getpid(), "time": time.time()}).encode()
        if self._create_exclusive(rel, me):
            return True
        if not self._holder_is_gone(rel, _GRACE_SECONDS):
            return False
        self._delete(rel)
        return self._create_exclusive(rel, me)

    def release_stream_file(self, digest: str) -> None:
        self._delete(f"stream/claims/{digest}.json")

    def last_stream_event(self, wanted: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any] | None:
        """The newest stream event `wanted` accepts, read from the newest back."""
        for name in reversed(self._list_files("stream/events")):
            with contextlib.suppress(FileNotFoundError, UserError):
                event = self._read_json(f"stream/events/{name}")
                if _shaped(event, _EVENT_FIELDS, f"stream/events/{name}") and wanted(event):
                    return event
        return None

    def stream_events(self) -> list[dict[str, Any]]:
        """Every stream event, oldest first."""
        out = []
        for name in self._list_files("stream/events"):
            with contextlib.suppress(FileNotFoundError, UserError):
                event = self._read_json(f"stream/events/{name}")
                if _shaped(event, _EVENT_FIELDS, f"stream/events/{name}"):
                    out.append(event)
        return out
