"""The storage core under the store's repositories: paths, atomic writes, exclusive creates,
claims of folders, locks and whether their holders are alive, and the store's event log.

Writes are atomic: a temporary name then a rename on local disks, a single PUT on object
stores. Leftovers of writers that died (temporary files, unmarked folders) are removed just
before a write into the same folder, never while their writer may still be alive.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from continual_trainer.data import failpoints
from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import FORMAT_VERSION
from continual_trainer.data.objectstore import S3Conditional
from continual_trainer.data.parquet import HOST, one_line, parse_temp_name, redact, resolve, scrub, write_temp
from continual_trainer.data.schema import Schema

log = logging.getLogger("continual_trainer.data.storage")

_LOCK_STALE_SECONDS = 300.0


# A leftover whose writer cannot be checked (another host, or no owner file yet) is
# removed only once it is this old: a live writer is never that slow between steps.
_GRACE_SECONDS = 3600.0


_VERSION_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_stamp() -> str:
    """A sortable UTC time stamp with milliseconds, fit for file names."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}"


@dataclass(frozen=True)
class StoreMeta:
    """The contents of store.json: the schema (columns, label, classes, task), the network
    recipe, the holdout fraction and the store format (1: numeric columns only)."""

    schema: Schema
    model: str
    holdout_fraction: float = 0.2
    format_version: int = FORMAT_VERSION
    architecture_sha256: str | None = None

    @property
    def task(self) -> str:
        return self.schema.task

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            **self.schema.to_json(),
            "model": self.model,
            "holdout_fraction": self.holdout_fraction,
            **({"architecture_sha256": self.architecture_sha256} if self.architecture_sha256 else {}),
        }

    @classmethod
    def from_json(cls, d: Any, source: str) -> StoreMeta:
        if not isinstance(d, dict):
            raise UserError(f"{source}: store.json is damaged (expected a JSON object)")
        version = d.get("format_version")
        if not isinstance(version, int):
            raise UserError(f"{source}: store.json is damaged (no format_version)")
        if version > FORMAT_VERSION:
            raise UserError(
                f"{source}: store format version {version} is newer than this ctrain reads "
                f"({FORMAT_VERSION}); upgrade continual-trainer"
            )
        try:
            sha = d.get("architecture_sha256")
            return cls(Schema.from_json(d), str(d["model"]), float(d["holdout_fraction"]), version, sha)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source}: store.json is damaged ({exc!r})") from None


class StorageCore:
    """A store's files: every path relative to its root, read and written only through here.

    Attributes:
        meta: the contents of store.json (`Store.open` reads it once the store is reachable).
    """

    meta: StoreMeta

    def __init__(self, uri: str, fs: pafs.FileSystem, root: str, meta: StoreMeta | None) -> None:
        self._fs = fs
        self._rows: dict[str, int] = {}
        self._root = root.rstrip("/")
        self._local = isinstance(fs, pafs.LocalFileSystem)
        self._conditional = None if self._local else S3Conditional.for_uri(uri)
        self._display = redact(uri)
        self._cleaned: set[str] = set()
        self.uri = self._root if "://" not in uri else uri
        if meta is not None:
            self.meta = meta

    @property
    def display(self) -> str:
        """The store's URI fit to print (no credentials)."""
        return self._display

    def contains(self, uri: str) -> bool:
        """Whether `uri` names this store or a path inside it (symlinks resolved on local disks).

        No command writes a user-named output there: it could replace a file the store
        relies on.
        """
        fs, path = resolve(uri)
        if self._local != isinstance(fs, pafs.LocalFileSystem) or type(fs) is not type(self._fs):
            return False
        if self._local:
            root, path = os.path.realpath(self._root), os.path.realpath(path)
            return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
        path = path.rstrip("/")
        return path == self._root or path.startswith(self._root + "/")

    def _inside(self, rel: str) -> bool:
        """Whether `rel`, links resolved, is inside this (local) store."""
        root = os.path.realpath(self._root)
        return os.path.realpath(self._path(rel)).startswith(root.rstrip(os.sep) + os.sep)

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 60.0) -> Iterator[None]:
        """Hold `locks/<name>` for a read-modify-write; breaks locks of dead holders."""
        rel = f"locks/{name}"
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode()
        deadline = time.monotonic() + timeout
        while not self._create_exclusive(rel, me):
            if self._holder_is_gone(rel, _LOCK_STALE_SECONDS):
                log.warning("breaking stale lock %s", rel)
                self._delete(rel)
                continue
            if time.monotonic() > deadline:
                raise UserError(f"{self.display}: lock {name} is held by another process; try again")
            time.sleep(0.05)
        try:
            yield
        finally:
            self._delete(rel)

    def _holder_is_gone(self, rel: str, stale_after: float) -> bool:
        """Whether the process holding a lock or claim file has died (checked on this host, assumed
        after `stale_after` seconds elsewhere), or the file is unreadable and not new."""
        try:
            holder = json.loads(self._read(rel))
            pid, when = int(holder.get("pid", 0)), float(holder.get("time", 0))
        except FileNotFoundError:
            return False  # released meanwhile: just retry
        except (ValueError, OSError, TypeError, AttributeError):  # unreadable: a holder writes it whole at once
            info = self._fs.get_file_info(self._path(rel))
            return info.mtime is not None and time.time() - info.mtime.timestamp() > 5.0
        if holder.get("host") in (socket.gethostname(), HOST) and not pid_alive(pid):
            return True
        return time.time() - when > stale_after

    def _path(self, rel: str) -> str:
        return f"{self._root}/{rel}"

    def _where(self, rel: str) -> str:
        return self._path(rel) if self._local else f"{self.display.rstrip('/')}/{rel}"

    def _exists(self, rel: str) -> bool:
        return self._fs.get_file_info(self._path(rel)).type != pafs.FileType.NotFound

    def _read(self, rel: str) -> bytes:
        """Raw bytes of a store file; FileNotFoundError if it is not there."""
        p = self._path(rel)
        try:
            with self._fs.open_input_stream(p) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError:
            if self._fs.get_file_info(p).type == pafs.FileType.NotFound:
                raise FileNotFoundError(p) from None
            raise

    def _read_json(self, rel: str) -> Any:
        """A JSON file's value; UserError naming the file if it is not JSON."""
        raw = self._read(rel)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise UserError(f"{self.display}: {rel} is damaged (not valid JSON: {exc})") from None

    def _list_dirs(self, rel: str) -> list[str]:
        return self._list(rel, pafs.FileType.Directory)

    def _list_files(self, rel: str) -> list[str]:
        return self._list(rel, pafs.FileType.File)

    def _list(self, rel: str, kind: pafs.FileType) -> list[str]:
        sel = pafs.FileSelector(self._path(rel), allow_not_found=True)
        return sorted(i.base_name for i in self._fs.get_file_info(sel) if i.type == kind)

    def _write(self, rel: str, data: bytes) -> None:
        """Write `data` at `rel` atomically: readers see the old file or the whole new one.

        A write that fails (disk full, file-size limit, permissions) leaves nothing behind
        and raises UserError naming the file.
        """
        target = self._path(rel)
        parent = target.rsplit("/", 1)[0]
        try:
            self._fs.create_dir(parent, recursive=True)
            if not self._local:
                with self._fs.open_output_stream(target) as f:  # one PUT: all or nothing
                    f.write(data)
                return
            self._remove_dead_temporaries(parent)
            tmp = write_temp(parent, data)
            failpoints.reached("write.after-temp")
            try:
                os.replace(tmp, target)
                failpoints.reached("write.after-rename")
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise UserError(f"{self.display}: cannot write {rel} ({one_line(scrub(str(exc), self.uri))})") from None

    def _write_json(self, rel: str, obj: Any) -> None:
        self._write(rel, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def _create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create `rel` with `data` unless it exists; True if this call created it.

        Local disks: write a temporary file, then hard-link it into place, which fails if
        the name is taken. S3: a PUT with `If-None-Match: *`. Other object stores: check,
        then PUT (not race-free; see README).
        """
        target = self._path(rel)
        parent = target.rsplit("/", 1)[0]
        self._fs.create_dir(parent, recursive=True)
        if self._conditional is not None:
            return self._conditional.put_if_absent(rel, data)
        if not self._local:
            if self._exists(rel):
                return False
            self._write(rel, data)
            return True
        self._remove_dead_temporaries(parent)
        tmp = write_temp(parent, data)
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self._fs.delete_file(self._path(rel))

    @contextlib.contextmanager
    def _abandon_on_failure(self, folder: str) -> Iterator[None]:
        """Remove a claimed folder if filling it fails (it never got its commit marker)."""
        try:
            yield
        except BaseException:
            if self._local:
                shutil.rmtree(self._path(folder), ignore_errors=True)
            raise

    def _claim(self, folder: str, owner: str) -> bool:
        """Create `folder` for this process to fill; False if it exists.

        On local disks the folder is made exclusively and its owner file (host, pid)
        follows; until then cleanup leaves it alone for the grace period.
        """
        me = json.dumps({"host": HOST, "pid": os.getpid()}).encode()
        if not self._local:
            return self._create_exclusive(f"{folder}/{owner}", me)
        self._fs.create_dir(self._path(folder).rsplit("/", 1)[0], recursive=True)
        try:
            os.mkdir(self._path(folder))
        except FileExistsError:
            return False
        self._write(f"{folder}/{owner}", me)
        return True

    def _remove_dead_temporaries(self, directory: str) -> None:
        """Remove temporary files of dead writers in `directory` (once per process and folder)."""
        if directory in self._cleaned:
            return
        self._cleaned.add(directory)
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(directory):
                owner = parse_temp_name(entry.name)
                if owner is not None and entry.is_file() and _is_dead(*owner, _age(entry.path)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        log.info("removed %s, left by a writer that died", entry.path)

    def _remove_uncommitted(self, kind: str, marker: str, owner_file: str) -> None:
        """Remove folders under `kind/` without their commit marker whose writer is dead (and
        dead writers' temporary files there)."""
        if not self._local:
            return
        self._remove_dead_temporaries(self._path(kind))
        for name in self._list_dirs(kind):
            folder = os.path.join(self._root, kind, name)
            if os.path.exists(os.path.join(folder, marker)):
                continue
            owner = _read_owner(os.path.join(folder, owner_file))
            if owner is not None:
                dead = _is_dead(*owner, _age(folder))
            else:  # killed before its owner file was in place: its temporary files name the writer
                writers = {w for w in map(parse_temp_name, _names(folder)) if w is not None}
                dead = all(_is_dead(*w, _age(folder)) for w in writers) if writers else _age(folder) > _GRACE_SECONDS
            if not dead:
                continue
            if kind == "batches" and os.path.exists(os.path.join(folder, "data.parquet")):
                # Input data is never deleted: the bytes go to quarantine, with the reason.
                dest = self._path(f"quarantine/{utc_stamp()}-{uuid.uuid4().hex[:4]}-uncommitted-{name}")
                with contextlib.suppress(OSError):
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    os.replace(folder, dest)
                    with open(os.path.join(dest, "reason.txt"), "w") as f:
                        f.write("an ingest stopped before committing this batch (no batch.json); not in the store\n")
                    log.info("moved uncommitted batches/%s to %s", name, dest)
                    continue
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed uncommitted %s/%s, left by a writer that died", kind, name)

    def record_event(self, kind: str, event: dict[str, Any]) -> None:
        body = {"kind": kind, "time": dt.datetime.now(dt.timezone.utc).isoformat(), **event}
        self._write(f"events/{utc_stamp()}-{kind}-{uuid.uuid4().hex[:6]}.json", json.dumps(body, default=str).encode())

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The store's events (promotions, deletions), oldest first; unreadable ones skipped."""
        out = []
        for name in self._list_files("events"):  # sorted: oldest first
            with contextlib.suppress(FileNotFoundError, UserError, ValueError):
                event = self._read_json(f"events/{name}")
                if isinstance(event, dict) and (kind is None or event.get("kind") == kind):
                    out.append(event)
        return out


def _names(folder: str) -> list[str]:
    with contextlib.suppress(OSError):
        return os.listdir(folder)
    return []


def _read_owner(path: str) -> tuple[str, int] | None:
    """(host, pid) from an owner file; a bare pid (stores before 0.2) means this host."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    try:
        d = json.loads(text)
        if isinstance(d, int):
            return HOST, d
        return str(d["host"]), int(d["pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _age(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def _is_dead(host: str, pid: int, age: float) -> bool:
    """Whether the writer (host, pid) is gone: checked on this host, assumed after the grace period elsewhere."""
    return not pid_alive(pid) if host == HOST else age > _GRACE_SECONDS


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with this id runs (one we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
