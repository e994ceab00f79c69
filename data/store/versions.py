"""The versions repository: model versions (members, then the manifest as the commit marker),
CURRENT by compare-and-swap, resolving a reference to a version, and pruning."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
import uuid
from collections.abc import Mapping

import pyarrow.fs as pafs

from continual_trainer.data import failpoints
from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import FILE_NAME, FORMAT_VERSION, Manifest, ManifestError, Member, lineage
from continual_trainer.data.parquet import one_line, scrub
from continual_trainer.data.store.core import _VERSION_ID, StorageCore, sha256, utc_stamp

log = logging.getLogger("continual_trainer.data.storage")

_VERSION_MARKER, _VERSION_OWNER = "manifest.json", ".writer"


class VersionGone(UserError):
    """A version to promote was deleted (by gc) before its promotion."""


class Versions(StorageCore):
    """Model versions and CURRENT."""

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
        """The promoted version, or None before the first; UserError if CURRENT names no committed
        version or cannot be read as a file."""
        try:
            return self._current_of(self._read("CURRENT"))
        except FileNotFoundError:
            return None
        except OSError as exc:  # a folder in its place, no permission, an unreachable object store
            raise UserError(
                f"{self.display}: CURRENT cannot be read ({one_line(scrub(str(exc), self.uri))}); it should be a file "
                "naming the current version"
            ) from None

    def check_files(self, version: str) -> None:
        """UserError unless every file of the version is there and matches its sha256."""
        for name in sorted(self.manifest(version).files):
            self.read_member(version, name)

    def fingerprint(self, version: str) -> tuple[tuple[str, int, int], ...]:
        """The version's files as (name, size, modification time): changes when a file is repaired."""
        folder = self._path(f"models/{version}")
        try:
            infos = self._fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except OSError:
            return ()
        return tuple(sorted((i.base_name, int(i.size or 0), int(i.mtime_ns or 0)) for i in infos))

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
            self.check_files(version)  # a damaged version never becomes current (gc cannot delete it meanwhile)
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
            close = _close_matches(ref, versions)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise UserError(f"{self.display}: no model version {ref!r}; {hint}see `ctrain history`")
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

    def _current_of(self, raw: bytes) -> str | None:
        version = raw.decode(errors="replace").strip()
        if not version:
            return None
        if not _VERSION_ID.fullmatch(version) or not self._exists(f"models/{version}/{_VERSION_MARKER}"):
            raise UserError(f"{self.display}: CURRENT is damaged: it names no committed version ({version[:60]!r})")
        return version


def _close_matches(ref: str, versions: list[str]) -> list[str]:
    """Up to three versions whose id, or whose prefix or suffix as long as `ref`, is close to it
    (a mistyped suffix such as `2ae3` for `...-2ae2`)."""
    import difflib

    n = len(ref)
    pieces: dict[str, str] = {}
    for v in versions:
        pieces.setdefault(v, v)
        pieces.setdefault(v[-n:], v)
        pieces.setdefault(v[:n], v)
    out: list[str] = []
    for piece in difflib.get_close_matches(ref, list(pieces), n=6, cutoff=0.6):
        if pieces[piece] not in out:
            out.append(pieces[piece])
    return out[:3]
