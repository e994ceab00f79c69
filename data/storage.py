"""The store: the one module that knows every path on shared storage.

Layout (see DESIGN.md)::

    store.json                       format version, schema, model spec, holdout fraction
    batches/<seq>-<sha12>/           data.parquet, then batch.json (the commit marker)
    quarantine/<when>-<name>/        the rejected file as it came, and reason.txt
    models/<version>/                member-*.keras, then manifest.json (the commit marker)
    CURRENT                          the promoted version, replaced by compare-and-swap
    sweeps/<id>/                     results and reports of sweeps and demos
    locks/                           short-lived lock files

Writes are atomic: a temporary name then a rename on local disks, a single PUT on
object stores. A batch or model version without its marker file does not exist.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from data.errors import UserError
from data.parquet import TMP_PREFIX, redact, resolve, scrub, write_temp
from data.schema import Schema

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_LOCK_STALE_SECONDS = 300.0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_stamp() -> str:
    """A sortable UTC time stamp with milliseconds, fit for file names."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}"


@dataclass(frozen=True)
class StoreMeta:
    """The contents of store.json."""

    schema: Schema
    model: str
    holdout_fraction: float = 0.2
    format_version: int = FORMAT_VERSION
    task: str = "classification"

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "task": self.task,
            **self.schema.to_json(),
            "model": self.model,
            "holdout_fraction": self.holdout_fraction,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str) -> StoreMeta:
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UserError(
                f"{source}: store format version {version!r} is newer than this ctrain reads "
                f"({FORMAT_VERSION}); upgrade continual-trainer"
            )
        try:
            return cls(Schema.from_json(d), d["model"], float(d["holdout_fraction"]), version, d["task"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source}: store.json is damaged ({exc!r})") from exc


class Store:
    """A store on a local folder or any pyarrow filesystem.

    Use `Store.create` or `Store.open`; both fail with UserError on a bad URI.
    """

    def __init__(self, uri: str, fs: pafs.FileSystem, root: str, meta: StoreMeta) -> None:
        self.uri = uri
        self.fs = fs
        self.root = root.rstrip("/")
        self.meta = meta
        self._local = isinstance(fs, pafs.LocalFileSystem)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, uri: str, meta: StoreMeta) -> Store:
        fs, root = resolve(uri)
        store = cls(uri, fs, root, meta)
        try:
            if fs.get_file_info(store.path("store.json")).type != pafs.FileType.NotFound:
                raise UserError(f"{redact(uri)}: a store already exists here; use another --store")
            fs.create_dir(root, recursive=True)
        except OSError as exc:
            raise UserError(f"{redact(uri)}: cannot reach the store ({scrub(str(exc), uri)})") from None
        store.write_json("store.json", meta.to_json())
        return store

    @classmethod
    def open(cls, uri: str) -> Store:
        fs, root = resolve(uri)
        probe = cls(uri, fs, root, None)  # type: ignore[arg-type]
        try:
            raw = probe.read("store.json")
        except FileNotFoundError:
            raise UserError(
                f"{redact(uri)}: not a ctrain store (no store.json); create one with `ctrain init`"
            ) from None
        except OSError as exc:
            raise UserError(f"{redact(uri)}: cannot reach the store ({scrub(str(exc), uri)})") from None
        try:
            d = json.loads(raw)
        except ValueError as exc:
            raise UserError(f"{redact(uri)}: store.json is not valid JSON ({exc})") from exc
        probe.meta = StoreMeta.from_json(d, redact(uri))
        probe.cleanup_temporary()
        return probe

    @property
    def schema(self) -> Schema:
        return self.meta.schema

    @property
    def display(self) -> str:
        return redact(self.uri)

    # -- paths and raw I/O -------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read(self, *parts: str) -> bytes:
        """Raw bytes of a store file; FileNotFoundError if it is not there."""
        p = self.path(*parts)
        if self.fs.get_file_info(p).type == pafs.FileType.NotFound:
            raise FileNotFoundError(p)
        with self.fs.open_input_stream(p) as f:
            return f.read()

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read(*parts))

    def list_dirs(self, *parts: str) -> list[str]:
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory)

    def write(self, rel: str, data: bytes) -> None:
        """Write `data` at `rel` atomically: readers see the old file or the whole new one."""
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if not self._local:
            with self.fs.open_output_stream(target) as f:  # one PUT: all or nothing
                f.write(data)
            return
        os.replace(write_temp(parent, data), target)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write(rel, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create `rel` with `data` unless it exists; True if this call created it.

        Local disks: write a temporary file, then hard-link it into place, which fails if
        the name is taken. Object stores: check, then PUT (not race-free; see README).
        """
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if not self._local:
            if self.exists(rel):
                return False
            self.write(rel, data)
            return True
        tmp = write_temp(parent, data)
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def cleanup_temporary(self) -> int:
        """Remove what writers that died left behind; return how many things.

        That is temporary files, and batch or version folders that never got their
        commit marker (`batch.json`, `manifest.json`) and whose writer is gone. Only on
        local disks, where a writer's pid can be checked.
        """
        if not self._local:
            return 0
        removed = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.startswith(TMP_PREFIX):
                    continue
                pid = name[len(TMP_PREFIX) :].split("-", 1)[0]
                if pid.isdigit() and not _pid_alive(int(pid)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
        for folder, owner, marker in (("batches", ".claim", "batch.json"), ("models", ".writer", "manifest.json")):
            for name in self.list_dirs(folder):
                path = os.path.join(self.root, folder, name)
                if os.path.exists(os.path.join(path, marker)):
                    continue
                try:
                    with open(os.path.join(path, owner)) as f:
                        pid = int(f.read().strip() or 0)
                except (FileNotFoundError, ValueError):
                    pid = 0
                if not _pid_alive(pid):
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
        if removed:
            log.info("removed %d leftover(s) of interrupted writers", removed)
        return removed

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 60.0) -> Iterator[None]:
        """Hold `locks/<name>` for a read-modify-write; breaks locks of dead holders."""
        rel = f"locks/{name}"
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode()
        deadline = time.monotonic() + timeout
        while not self.create_exclusive(rel, me):
            if self._lock_is_stale(rel):
                log.warning("breaking stale lock %s", rel)
                with contextlib.suppress(FileNotFoundError, OSError):
                    self.fs.delete_file(self.path(rel))
                continue
            if time.monotonic() > deadline:
                raise UserError(f"{self.display}: lock {name} is held by another process; try again")
            time.sleep(0.05)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.delete_file(self.path(rel))

    def _lock_is_stale(self, rel: str) -> bool:
        try:
            holder = json.loads(self.read(rel))
        except (FileNotFoundError, ValueError, OSError):
            return False  # vanished or half-visible: just retry
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0))):
            return True
        return time.time() - float(holder.get("time", 0)) > _LOCK_STALE_SECONDS

    # -- store.json ----------------------------------------------------------------------------

    def set_classes(self, classes: tuple[Any, ...]) -> None:
        """Grow the class list (never shrinks or reorders existing classes)."""
        with self.lock("store"):
            current = StoreMeta.from_json(self.read_json("store.json"), self.display)
            merged = tuple(sorted(set(current.schema.classes) | set(classes)))
            schema = Schema(current.schema.features, current.schema.label, merged)
            self.meta = StoreMeta(schema, current.model, current.holdout_fraction, current.format_version, current.task)
            self.write_json("store.json", self.meta.to_json())

    # -- batches -----------------------------------------------------------------------------

    def batch_ids(self) -> list[str]:
        """Committed batches in ingestion order."""
        return [b for b in self.list_dirs("batches") if self.exists("batches", b, "batch.json")]

    def batch_info(self, batch_id: str) -> dict[str, Any]:
        try:
            return self.read_json("batches", batch_id, "batch.json")
        except FileNotFoundError:
            raise UserError(f"{self.display}: no batch {batch_id}") from None

    def find_batch(self, digest: str) -> str | None:
        return next(
            (b for b in self.batch_ids() if b.endswith("-" + digest[:12]) and self.batch_info(b)["sha256"] == digest),
            None,
        )

    def add_batch(self, data: bytes, info: dict[str, Any]) -> str:
        """Keep `data` (Parquet bytes, unaltered) as the next batch; return its id."""
        digest = sha256(data)
        while True:
            taken = self.list_dirs("batches")
            seq = max((int(b.split("-", 1)[0]) for b in taken), default=0) + 1
            batch_id = f"{seq:06d}-{digest[:12]}"
            if self.create_exclusive(f"batches/{batch_id}/.claim", str(os.getpid()).encode()):
                break
        self.write(f"batches/{batch_id}/data.parquet", data)
        self.write_json(
            f"batches/{batch_id}/batch.json", {**info, "id": batch_id, "sha256": digest, "bytes": len(data)}
        )
        return batch_id

    def read_batch(self, batch_id: str) -> bytes:
        info = self.batch_info(batch_id)
        data = self.read("batches", batch_id, "data.parquet")
        if sha256(data) != info["sha256"]:
            raise UserError(f"{self.display}: batch {batch_id} fails its sha256 check; the file was altered")
        return data

    def quarantine(self, name: str, data: bytes, reason: str) -> str:
        """Keep rejected input as it came, with the reason; return the folder."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:80] or "input"
        folder = f"quarantine/{utc_stamp()}-{uuid.uuid4().hex[:4]}-{safe}"
        self.write(f"{folder}/{safe}", data)
        self.write(f"{folder}/reason.txt", (reason + "\n").encode())
        return folder

    # -- model versions ----------------------------------------------------------------------

    def new_version_id(self, strategy: str) -> str:
        return f"{utc_stamp()}-{strategy}-{uuid.uuid4().hex[:4]}"

    def write_version(self, version: str, files: dict[str, bytes], manifest: dict[str, Any]) -> dict[str, Any]:
        """Write a version's files, then its manifest (with their sha256) as the commit marker."""
        if not self.create_exclusive(f"models/{version}/.writer", str(os.getpid()).encode()):
            raise RuntimeError(f"version {version} is being written by another process")
        for name, data in files.items():
            self.write(f"models/{version}/{name}", data)
        manifest = {**manifest, "version": version, "files": {n: sha256(d) for n, d in files.items()}}
        body = (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()
        if not self.create_exclusive(f"models/{version}/manifest.json", body):
            raise RuntimeError(f"version {version} already has a manifest")
        return manifest

    def versions(self) -> list[str]:
        """Committed versions, oldest first."""
        return [v for v in self.list_dirs("models") if self.exists("models", v, "manifest.json")]

    def manifest(self, version: str) -> dict[str, Any]:
        try:
            return self.read_json("models", version, "manifest.json")
        except FileNotFoundError:
            raise UserError(f"{self.display}: no model version {version!r}; see `ctrain history`") from None

    def read_version_file(self, version: str, name: str) -> bytes:
        """A version's file, refused unless it matches the manifest's sha256."""
        expected = self.manifest(version)["files"].get(name)
        if expected is None:
            raise UserError(f"{self.display}: version {version} has no file {name}")
        data = self.read("models", version, name)
        if sha256(data) != expected:
            raise UserError(
                f"{self.display}: {version}/{name} fails its sha256 check; the file was altered or is corrupt"
            )
        return data

    def current(self) -> str | None:
        try:
            return self.read("CURRENT").decode().strip() or None
        except FileNotFoundError:
            return None

    def promote(self, version: str, expected: str | None) -> bool:
        """Compare-and-swap CURRENT from `expected` to `version`; False if another won."""
        if version not in self.versions():
            raise ValueError(f"cannot promote uncommitted version {version}")
        with self.lock("CURRENT"):
            if self.current() != expected:
                return False
            self.write("CURRENT", (version + "\n").encode())
            return True

    # -- reports -------------------------------------------------------------------------------

    def write_report(self, report_id: str, files: dict[str, bytes]) -> str:
        for name, data in files.items():
            self.write(f"sweeps/{report_id}/{name}", data)
        return self.path("sweeps", report_id)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
