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
    predictions/log/<when>-<rand>.parquet  what `ctrain serve` answered (the prediction log)
    predictions/labelled/<batch>.parquet   the logged keys whose labels made that batch
    locks/                           short-lived lock files

Everything else asks the store by name (`add_batch`, `write_version`, `trial_records`,
`stream_marker`, ...); nothing outside the store (this module and `data/store/`: the storage
core and its repositories for batches, versions, runs and predictions) joins a store path.

Writes are atomic: a temporary name then a rename on local disks, a single PUT on
object stores. A batch or model version without its marker file does not exist.
Leftovers of writers that died (temporary files, unmarked folders) are removed just
before a write into the same folder, never while their writer may still be alive.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from typing import Any

import pyarrow.fs as pafs

from continual_trainer.data import failpoints
from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import Manifest
from continual_trainer.data.parquet import one_line, resolve, scrub
from continual_trainer.data.schema import Schema
from continual_trainer.data.store.batches import _BATCH_MARKER, Batches, batch_name, trust, verified
from continual_trainer.data.store.core import _LOCK_STALE_SECONDS, StoreMeta, sha256, utc_stamp
from continual_trainer.data.store.predictions import Predictions
from continual_trainer.data.store.runs import Runs
from continual_trainer.data.store.versions import _VERSION_MARKER, VersionGone, Versions

__all__ = [
    "NotAStore",
    "Store",
    "StoreMeta",
    "VersionGone",
    "batch_name",
    "check_output",
    "sha256",
    "store_around",
    "trust",
    "utc_stamp",
    "verified",
]

_ARCHITECTURE = "architecture.keras"
_MIRROR = "mlflow.json"  # where the store's MLflow mirror is: recorded the first time it mirrors


def _reopened(uri: str, meta: StoreMeta) -> Store:
    fs, root = resolve(uri)
    return Store(uri, fs, root, meta)


class NotAStore(UserError):
    """There is no store (no store.json) at the URI."""


class Store(Batches, Versions, Runs, Predictions):
    """A store on a local folder or any pyarrow filesystem.

    Use `Store.create` or `Store.open`; both fail with UserError on a bad URI.

    Attributes:
        uri: where the store is, as every process can reach it: an absolute path for a
            local folder (a relative `--store` is resolved once, here), else the URI.
        meta: the contents of store.json (`Store.open` reads it once the store is reachable).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        """A store crosses to other processes (Ray workers) as its URI and metadata, and
        connects anew there (an S3 store's client cannot be pickled)."""
        return (_reopened, (self.uri, self.meta))

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

    def mirror(self) -> tuple[str, str] | None:
        """The MLflow tracking URI and registered model this store mirrors to, if it ever has."""
        try:
            d = self._read_json(_MIRROR)
        except FileNotFoundError:
            return None
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in ("tracking_uri", "model")):
            raise UserError(f"{self.display}: {_MIRROR} is damaged (not a tracking URI and a model name)")
        return d["tracking_uri"], d["model"]

    def record_mirror(self, tracking_uri: str, model: str) -> None:
        """Remember where the store mirrors, so every later promotion or rollback goes there too."""
        if self.mirror() != (tracking_uri, model):
            self._write_json(_MIRROR, {"tracking_uri": tracking_uri, "model": model})

    def grow_schema(self, grown: Schema) -> None:
        """Add a batch's new classes and categorical values to store.json (never shrinks or
        reorders what is there; under a lock, so concurrent ingests both add theirs)."""
        with self.lock("store"):
            current = StoreMeta.from_json(self._read_json("store.json"), self.display)
            self.meta = dataclasses.replace(current, schema=current.schema.merged(grown))
            self._write_json("store.json", self.meta.to_json())

    def verify(self) -> tuple[list[str], list[str]]:
        """Check the whole store: (problems, notes). Problems: a CURRENT that names no committed
        version, a committed file that is missing or fails its sha256 (every version's, every
        batch's), a current lineage with a missing parent, a version that saw a batch the store
        lacks. Notes: what is unfinished but harmless (an init that has not promoted a first
        version yet, folders without their commit marker that the next write clears)."""
        problems, notes = [], []
        try:
            current = self.current()
        except (UserError, OSError) as exc:
            problems.append(one_line(str(exc)).removeprefix(f"{self.display}: ") or f"CURRENT: {type(exc).__name__}")
            current = None
        else:
            promoted = [e for e in self.events("promote") if e.get("version")]
            if current is None and promoted:
                last = promoted[-1]["version"]
                problems.append(
                    f"CURRENT is missing, yet {len(promoted)} promotion(s) were recorded (the last made {last} "
                    f"current); make it current again with `ctrain promote --store {self.display} {last}`"
                )
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
        for batch_id, record in self.retired_batches().items():
            if record.get("damaged"):
                problems.append(f"batch {batch_id}'s retirement record is damaged (not a JSON object)")
        problems += self.verify_predictions(batches)
        return problems, notes


def store_around(uri: str) -> str | None:
    """The store that `uri` names or lies inside (the nearest folder at or above it holding a
    store's `store.json`; symlinks resolved on local disks), as a URI fit to print; else None."""
    fs, path = resolve(uri)
    local = isinstance(fs, pafs.LocalFileSystem)
    here = os.path.realpath(path) if local else path.rstrip("/")
    for _ in range(64):  # a bounded walk up to the root
        try:
            if fs.get_file_info(f"{here.rstrip('/')}/store.json").type == pafs.FileType.File:
                return here if local else _redact(uri, here)
        except OSError:  # a prefix the credentials may not list: not a store we can see
            pass
        parent = os.path.dirname(here) if local else here.rsplit("/", 1)[0] if "/" in here else ""
        if not parent or parent == here:
            return None
        here = parent
    return None


def check_output(uri: str, option: str, *, inputs: tuple[str, ...] = (), inbox: str | None = None) -> None:
    """UserError unless a command may write a user's output at `uri` (given as the API argument
    `option`): never a path inside a store, its own files included (through relative paths and
    symlinks), never one of the command's `inputs`, and, for an archive, never the `inbox` or a
    folder inside it. Every option that names where a command writes goes through this."""
    from continual_trainer.data.parquet import redact, same_file

    store = store_around(uri)
    if store is not None:
        raise UserError.about(option, redact(uri), f"is inside the store {store}; write it outside any store")
    for given in inputs:
        if same_file(uri, given):
            raise UserError.about(option, redact(uri), "is the input file; choose another path")
    if inbox is not None:
        (fs_a, a), (fs_b, b) = resolve(uri), resolve(inbox)
        if type(fs_a) is type(fs_b):
            if isinstance(fs_a, pafs.LocalFileSystem):
                a, b = os.path.realpath(a), os.path.realpath(b)
            a, b = a.rstrip("/"), b.rstrip("/")
            if a == b or a.startswith(b + "/"):
                raise UserError.about(option, redact(uri), "is the inbox or inside it; choose a folder outside it")


def _redact(uri: str, path: str) -> str:
    from continual_trainer.data.parquet import redact

    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    return redact(f"{scheme}://{path}") if scheme else path
