"""The store: the one module that knows every path on shared storage.

Layout::

    store.json                       format version, schema, model spec, holdout fraction
    batches/<seq>-<sha12>/           data.parquet, then batch.json (the commit marker)
    quarantine/<when>-<name>/        the rejected file as it came, and reason.txt
    models/<version>/                member-<i>.keras, then manifest.json (the commit marker)
    CURRENT                          the promoted version, replaced by compare-and-swap
    events/<when>-<kind>-<rand>.json the store's event log: every promotion, rollback and pruning
    sweeps/<id>/                     sweep.yaml, trials/<trial>.json, results and reports
    stream/events/, stream/processed/  one event per inbox file; a marker per file's sha256
    locks/                           short-lived lock files

Everything else asks the store by name (`add_batch`, `write_version`, `trial_records`,
`stream_marker`, ...); nothing outside this module joins a store path.

Writes are atomic: a temporary name then a rename on local disks, a single PUT on
object stores. A batch or model version without its marker file does not exist.
Leftovers of writers that died (temporary files, unmarked folders) are removed just
before a write into the same folder, never while their writer may still be alive.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from continual_trainer.data import failpoints
from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import FILE_NAME, FORMAT_VERSION, Manifest, ManifestError, Member, lineage
from continual_trainer.data.objectstore import S3Conditional
from continual_trainer.data.parquet import HOST, one_line, parse_temp_name, redact, resolve, scrub, write_temp
from continual_trainer.data.schema import Schema

log = logging.getLogger(__name__)

_LOCK_STALE_SECONDS = 300.0
# A leftover whose writer cannot be checked (another host, or no owner file yet) is
# removed only once it is this old: a live writer is never that slow between steps.
_GRACE_SECONDS = 3600.0
_ARCHITECTURE = "architecture.keras"
_VERSION_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_BATCH_MARKER, _BATCH_OWNER, _RETIRED = "batch.json", ".claim", "retired.json"
_BLOCK = 8 << 20  # bytes read at a time when checking a batch's sha256
_VERIFIED: set[tuple[Any, ...]] = set()  # batch files checked in this process (uri, id, size, mtime)
_VERSION_MARKER, _VERSION_OWNER = "manifest.json", ".writer"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_stamp() -> str:
    """A sortable UTC time stamp with milliseconds, fit for file names."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}"


def _reopened(uri: str, meta: StoreMeta) -> Store:
    fs, root = resolve(uri)
    return Store(uri, fs, root, meta)


def verified() -> frozenset[tuple[Any, ...]]:
    """The batch files this process has checked against their sha256 (see `Store.open_batch`),
    to hand to workers that read the same files (`trust`)."""
    return frozenset(_VERIFIED)


def trust(files: Iterable[tuple[Any, ...]]) -> None:
    """Count batch files another process of this job checked (`verified`) as checked; a file
    changed since, in size or modification time, is checked again."""
    _VERIFIED.update(files)


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


class NotAStore(UserError):
    """There is no store (no store.json) at the URI."""


class VersionGone(UserError):
    """A version to promote was deleted (by gc) before its promotion."""


class Store:
    """A store on a local folder or any pyarrow filesystem.

    Use `Store.create` or `Store.open`; both fail with UserError on a bad URI.

    Attributes:
        uri: where the store is, as every process can reach it: an absolute path for a
            local folder (a relative `--store` is resolved once, here), else the URI.
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

    def __reduce__(self) -> tuple[Any, ...]:
        """A store crosses to other processes (Ray workers) as its URI and metadata, and
        connects anew there (an S3 store's client cannot be pickled)."""
        return (_reopened, (self.uri, self.meta))

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, uri: str, meta: StoreMeta, architecture: bytes | None = None) -> Store:
        """A new store with `meta`; or, if an `init` that did not finish left a store without a
        current version here, that store with `meta` written anew (nothing depends on it yet).

        `architecture` is an imported model's `.keras` file, the recipe for fresh networks
        (kept checksummed, read back by `architecture()`).

        The caller holds the store's init claim from here until `release_init` (after its first
        promotion): a second init while this one lives gets UserError naming it; one whose holder
        died takes the store over.

        Raises UserError if a store with a current version exists here.
        """
        fs, root = resolve(uri)
        if architecture is not None:
            meta = dataclasses.replace(meta, architecture_sha256=sha256(architecture))
        store = cls(uri, fs, root, meta)
        try:
            fs.create_dir(root, recursive=True)
            store._claim_init()
        except OSError as exc:
            raise UserError(f"{store.display}: cannot reach the store ({one_line(scrub(str(exc), uri))})") from None
        try:
            body = (json.dumps(meta.to_json(), indent=2, sort_keys=True) + "\n").encode()
            if not store._create_exclusive("store.json", body):
                opened = cls.open(uri)
                if opened.current() is not None:
                    raise UserError(f"{store.display}: a store already exists here; use another --store")
                store._write_json("store.json", meta.to_json())  # an init that died left it: nothing depends on it
            if architecture is not None:
                store._write(_ARCHITECTURE, architecture)
            failpoints.reached("init.after-store-json")
        except BaseException:
            store.release_init()
            raise
        return store

    def _claim_init(self) -> None:
        """Take the store's init claim, or UserError naming the live init that holds it."""
        rel = "init.claim"
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode()
        while not self._create_exclusive(rel, me):
            if self._holder_is_gone(rel, _LOCK_STALE_SECONDS):
                self._delete(rel)  # an init that died: this one finishes the store
                continue
            try:
                holder = json.loads(self._read(rel))
                who = f" (pid {int(holder['pid'])} on {holder['host']})"
            except (OSError, ValueError, KeyError, TypeError):
                who = ""
            raise UserError(f"{self.display}: another init{who} is creating this store; use another --store")

    def release_init(self) -> None:
        """Give up the init claim (after the first promotion, or when init fails)."""
        self._delete("init.claim")

    @classmethod
    def open(cls, uri: str) -> Store:
        fs, root = resolve(uri)
        store = cls(uri, fs, root, None)
        try:
            raw = store._read("store.json")
        except FileNotFoundError:
            raise NotAStore(
                f"{store.display}: not a ctrain store (no store.json); create one with `ctrain init`"
            ) from None
        except OSError as exc:
            raise UserError(f"{store.display}: cannot reach the store ({one_line(scrub(str(exc), uri))})") from None
        try:
            d = json.loads(raw)
        except ValueError as exc:
            raise UserError(f"{store.display}: store.json is not valid JSON ({exc})") from None
        store.meta = StoreMeta.from_json(d, store.display)
        return store

    @property
    def schema(self) -> Schema:
        return self.meta.schema

    def architecture(self) -> bytes | None:
        """The imported model's `.keras` file, checked against its sha256; None if there is none."""
        if not self.meta.architecture_sha256:
            return None
        try:
            data = self._read(_ARCHITECTURE)
        except FileNotFoundError:
            raise UserError(
                f"{self.display}: {_ARCHITECTURE} is missing; the store cannot build fresh models"
            ) from None
        if sha256(data) != self.meta.architecture_sha256:
            raise UserError(f"{self.display}: {_ARCHITECTURE} fails its sha256 check; the file was altered")
        return data

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

    # -- store.json ----------------------------------------------------------------------------

    def grow_schema(self, grown: Schema) -> None:
        """Add a batch's new classes and categorical values to store.json (never shrinks or
        reorders what is there; under a lock, so concurrent ingests both add theirs)."""
        with self.lock("store"):
            current = StoreMeta.from_json(self._read_json("store.json"), self.display)
            self.meta = dataclasses.replace(current, schema=current.schema.merged(grown))
            self._write_json("store.json", self.meta.to_json())

    # -- batches -----------------------------------------------------------------------------

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
                except (ValueError, TypeError):
                    out[batch_id] = {"reason": "(its record is damaged)"}
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

    # -- quarantine ------------------------------------------------------------------------------

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

    # -- model versions ----------------------------------------------------------------------

    def new_version_id(self, strategy: str) -> str:
        return f"{utc_stamp()}-{strategy}-{uuid.uuid4().hex[:4]}"

    def write_version(
        self,
        version: str,
        members: list[tuple[bytes, int]],
        manifest: Manifest,
        extra: Mapping[str, bytes] | None = None,
    ) -> Manifest:
        """Commit a version: its members' `.keras` bytes (with how many classes each
        predicts) and `extra` files (name -> bytes, e.g. state arrays), then its manifest,
        with every file's sha256, as the commit marker."""
        if len(manifest.weights) != len(members) or not members:
            raise ValueError(f"{len(members)} members but {len(manifest.weights)} weights")
        self._remove_uncommitted("models", _VERSION_MARKER, _VERSION_OWNER)
        folder = f"models/{version}"
        if not self._claim(folder, _VERSION_OWNER):
            raise RuntimeError(f"version {version} is being written by another process")
        files, entries = {}, []
        with self._abandon_on_failure(folder):
            for i, (data, classes) in enumerate(members):
                name = f"member-{i}.keras"
                self._write(f"{folder}/{name}", data)
                files[name] = sha256(data)
                entries.append(Member(name, classes))
            for name, data in (extra or {}).items():
                if not FILE_NAME.fullmatch(name) or name.startswith((".", "member-")) or name == _VERSION_MARKER:
                    raise ValueError(f"{name!r} cannot be a file of a version")
                self._write(f"{folder}/{name}", data)
                files[name] = sha256(data)
            failpoints.reached("version.after-members")
            manifest = dataclasses.replace(
                manifest,
                version=version,
                members=tuple(entries),
                files=files,
                created=dt.datetime.now(dt.timezone.utc).isoformat(),
                format_version=FORMAT_VERSION,
            )
            body = (json.dumps(manifest.to_json(), indent=2, sort_keys=True, default=str) + "\n").encode()
            if not self._create_exclusive(f"{folder}/{_VERSION_MARKER}", body):
                raise RuntimeError(f"version {version} already has a manifest")
        failpoints.reached("version.after-manifest")
        return manifest

    def versions(self) -> list[str]:
        """Committed versions, oldest first."""
        return [v for v in self._list_dirs("models") if self._exists(f"models/{v}/{_VERSION_MARKER}")]

    def manifest(self, version: str) -> Manifest:
        """A committed version's manifest; UserError if there is none or it is damaged."""
        rel = f"models/{version}/{_VERSION_MARKER}"
        if not _VERSION_ID.fullmatch(version) or version.startswith("."):
            raise UserError(f"{self.display}: no model version {version!r}; see `ctrain history`")
        try:
            raw = self._read_json(rel)
        except FileNotFoundError:
            raise UserError(f"{self.display}: no model version {version!r}; see `ctrain history`") from None
        try:
            return Manifest.from_json(raw)
        except ManifestError as exc:
            raise UserError(f"{self.display}: {rel} is damaged ({exc})") from None

    def read_member(self, version: str, name: str) -> bytes:
        """A version's member file, refused unless it matches the manifest's sha256."""
        expected = self.manifest(version).files.get(name)
        if expected is None:
            raise UserError(f"{self.display}: version {version} has no file {name}")
        try:
            data = self._read(f"models/{version}/{name}")
        except FileNotFoundError:
            raise UserError(f"{self.display}: {version}/{name} is missing; the version is damaged") from None
        if sha256(data) != expected:
            raise UserError(
                f"{self.display}: {version}/{name} fails its sha256 check; the file was altered or is corrupt"
            )
        return data

    def current(self) -> str | None:
        """The promoted version, or None before the first; UserError if CURRENT names no committed version."""
        try:
            return self._current_of(self._read("CURRENT"))
        except FileNotFoundError:
            return None

    def promote(self, version: str, expected: str | None, *, by: str = "update", reason: str = "") -> bool:
        """Compare-and-swap CURRENT from `expected` to `version`; False if another won.

        Under the CURRENT lock; on S3 the write is also conditional on CURRENT's ETag (or
        on its absence), so two updaters cannot both win even if a lock were broken. A
        promotion that took effect is recorded in the event log (`by`: the command, and why).
        """
        body = (version + "\n").encode()
        with self.lock("CURRENT"):  # gc deletes under it too: what exists now still exists at the swap
            if version not in self.versions():
                raise VersionGone(
                    f"{self.display}: version {version} no longer exists (deleted by gc?); it cannot be promoted"
                )
            failpoints.reached("promote.before-swap")
            if self._conditional is None:
                if self.current() != expected:
                    return False
                self._write("CURRENT", body)
                won = True
            else:
                seen = self._conditional.get("CURRENT")
                if (self._current_of(seen[0]) if seen else None) != expected:
                    return False
                if seen is None:
                    won = self._conditional.put_if_absent("CURRENT", body)
                else:
                    won = self._conditional.put_if_unchanged("CURRENT", body, seen[1])
        if won:
            failpoints.reached("promote.after-swap")
            self.record_event("promote", {"version": version, "previous": expected, "by": by, "reason": reason})
        return won

    def resolve(self, ref: str) -> str:
        """The version a user's reference names: a full id, `current`, `parent` (of the current
        version), or a unique prefix or suffix of an id (`2ae2`, `20261129-1224`).

        Raises UserError naming the candidates if it names none or several.
        """
        if ref in ("current", "parent"):
            current = self.current()
            if current is None:
                raise UserError(f"{self.display}: no current version yet; create one with `ctrain init`")
            if ref == "current":
                return current
            parent = self.manifest(current).parent
            if parent is None:
                raise UserError(f"{self.display}: the current version {current} has no parent")
            return parent
        versions = self.versions()
        if ref in versions:
            return ref
        found = [v for v in versions if ref and (v.startswith(ref) or v.endswith(ref))]
        if len(found) == 1:
            return found[0]
        if not found:
            raise UserError(f"{self.display}: no model version {ref!r}; see `ctrain history`")
        listed = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise UserError(f"{self.display}: {ref!r} names {len(found)} versions ({listed}); give more of it")

    def prune(self, keep: int, *, dry_run: bool = False) -> list[str]:
        """Delete committed versions that were never promoted, but the `keep` newest of them; never
        the current version, its lineage, or a version ever promoted. Returns what was deleted (or,
        dry, would be).

        Decided and done under the CURRENT lock, which every promotion and rollback holds while it
        checks that its version exists and swaps CURRENT: a version promoted a moment ago is
        protected when this looks, and one deleted here can never become current afterwards."""
        with self.lock("CURRENT"):
            manifests = {v: self.manifest(v) for v in self.versions()}
            protected = {m.version for m in lineage(self.current(), manifests.get)}
            protected |= {str(e["version"]) for e in self.events("promote") if e.get("version")}
            unpromoted = [v for v in manifests if v not in protected]  # oldest first
            doomed = unpromoted[: max(0, len(unpromoted) - keep)]
            if dry_run:
                return doomed
            failpoints.reached("gc.after-listing")
            return [v for v in doomed if self._delete_version(v, manifests[v])]

    def _delete_version(self, version: str, manifest: Manifest) -> bool:
        """Remove a committed version (under the CURRENT lock): its manifest first (from then on
        it does not exist), then its files; recorded in the event log. A version folder that is a
        link out of the store is left alone (False): nothing outside the store is deleted."""
        folder = f"models/{version}"
        if self._local and not self._inside(folder):
            log.warning("gc: %s leads out of the store; left alone", self._path(folder))
            return False
        names = sorted({m.file for m in manifest.members} | set(manifest.files))
        self._delete(f"{folder}/{_VERSION_MARKER}")
        failpoints.reached("gc.after-manifest-delete")
        for name in [*names, _VERSION_OWNER]:
            self._delete(f"{folder}/{name}")
        if self._local:
            shutil.rmtree(self._path(folder), ignore_errors=True)
        self.record_event("delete", {"version": version})
        return True

    def verify(self) -> tuple[list[str], list[str]]:
        """Check the whole store: (problems, notes). Problems: a CURRENT that names no committed
        version, a committed file that is missing or fails its sha256 (every version's, every
        batch's), a current lineage with a missing parent, a version that saw a batch the store
        lacks. Notes: what is unfinished but harmless (an init that has not promoted a first
        version yet, folders without their commit marker that the next write clears)."""
        problems, notes = [], []
        try:
            current = self.current()
        except UserError as exc:
            problems.append(str(exc).removeprefix(f"{self.display}: "))
            current = None
        batches = set(self.batch_ids())
        for batch_id in sorted(batches):
            try:
                self.read_batch(batch_id)
            except (UserError, OSError) as exc:
                problems.append(str(exc).removeprefix(f"{self.display}: "))
        manifests: dict[str, Manifest] = {}
        for version in self.versions():
            try:
                manifests[version] = manifest = self.manifest(version)
                for name in sorted(manifest.files):
                    self.read_member(version, name)
            except (UserError, OSError) as exc:
                problems.append(str(exc).removeprefix(f"{self.display}: "))
                continue
            lost = sorted(set(manifest.batches_seen) - batches)
            if lost:
                problems.append(f"version {version} saw batch(es) the store lacks: {', '.join(lost)}")
        seen: set[str] = set()
        link = current
        while link is not None and link not in seen:
            seen.add(link)
            parent = manifests[link].parent if link in manifests else None
            if parent is not None and parent not in manifests:
                problems.append(f"the current lineage is broken: {link}'s parent {parent} is missing")
                break
            link = parent
        if current is None and not problems:
            notes.append("no current version yet: an init has not finished (run init again to finish it)")
        for kind, marker in (("batches", _BATCH_MARKER), ("models", _VERSION_MARKER)):
            for folder in self._list_dirs(kind):
                if not self._exists(f"{kind}/{folder}/{marker}"):
                    notes.append(f"{kind}/{folder} has no {marker} (an unfinished write; it does not exist)")
        return problems, notes

    def _inside(self, rel: str) -> bool:
        """Whether `rel`, links resolved, is inside this (local) store."""
        root = os.path.realpath(self._root)
        return os.path.realpath(self._path(rel)).startswith(root.rstrip(os.sep) + os.sep)

    # -- the event log: one file per event, never rewritten --------------------------------------

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

    def _current_of(self, raw: bytes) -> str | None:
        version = raw.decode(errors="replace").strip()
        if not version:
            return None
        if not _VERSION_ID.fullmatch(version) or not self._exists(f"models/{version}/{_VERSION_MARKER}"):
            raise UserError(f"{self.display}: CURRENT is damaged: it names no committed version ({version[:60]!r})")
        return version

    # -- sweeps and reports ------------------------------------------------------------------------

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

    # -- streams -----------------------------------------------------------------------------------

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

    # -- locks -------------------------------------------------------------------------------

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
        if holder.get("host") in (socket.gethostname(), HOST) and not _pid_alive(pid):
            return True
        return time.time() - when > stale_after

    # -- raw I/O (private: the layout is this module's business) -------------------------------

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

    # -- leftovers of dead writers (local disks, where a writer can be checked) ----------------

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


def _names(folder: str) -> list[str]:
    with contextlib.suppress(OSError):
        return os.listdir(folder)
    return []


def batch_name(seq: int, data: bytes) -> str:
    """The id of the `seq`-th batch (1 is the first) holding `data`: sortable, and naming its content."""
    return f"{seq:06d}-{sha256(data)[:12]}"


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
    return not _pid_alive(pid) if host == HOST else age > _GRACE_SECONDS


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
