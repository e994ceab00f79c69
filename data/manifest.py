"""A model version's manifest: one typed object, one reader (`from_json`), one writer (`to_json`).

The store writes it last, as the version's commit marker (see `data.storage`); its
shape is versioned with the store format.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 2  # 2: column kinds, vocabularies and statistics in store.json; regression
FILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")  # a name inside a version's folder: never a path


class ManifestError(ValueError):
    """A manifest whose JSON does not have the expected shape."""


@dataclass(frozen=True)
class Member:
    """One network of a version: its file in the version's folder and how many classes it predicts."""

    file: str
    classes: int


@dataclass(frozen=True)
class Manifest:
    """What a model version is and how it came to be.

    The caller fills what it knows (lineage, strategy, data, metrics, weights); the
    store fills `version`, `members`, `files` (sha256 of every file), `created` and
    `format_version` when it commits the version.
    """

    parent: str | None
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    model: str = ""
    batches_seen: tuple[str, ...] = ()
    batches_trained: tuple[str, ...] = ()
    metrics: dict[str, float | None] = field(default_factory=dict)
    current_metrics: dict[str, float | None] = field(default_factory=dict)
    train_seconds: float = 0.0
    execution: dict[str, Any] = field(default_factory=lambda: {"mode": "local"})
    origin: dict[str, Any] = field(default_factory=dict)  # where else it comes from, e.g. a sweep's trial
    state: dict[str, Any] = field(default_factory=dict)  # continual-learning state: files and summaries
    preprocessing: str = ""  # where its members' input statistics and vocabularies come from
    classes: tuple[Any, ...] = ()
    features: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    libraries: dict[str, str] = field(default_factory=dict)
    members: tuple[Member, ...] = ()
    files: dict[str, str] = field(default_factory=dict)
    version: str = ""
    created: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("batches_seen", "batches_trained", "classes", "features", "weights", "members"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_json(cls, d: Any) -> Manifest:
        """Read a manifest's JSON, raising ManifestError on anything of the wrong shape."""
        if not isinstance(d, dict):
            raise ManifestError(f"expected a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if not isinstance(version, int):
            raise ManifestError("no format_version")
        if version > FORMAT_VERSION:
            raise ManifestError(f"format version {version} is newer than this ctrain reads ({FORMAT_VERSION})")
        members = _list(d, "members", dict)
        try:
            members_t = tuple(Member(str(m["file"]), int(m["classes"])) for m in members)
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"a member entry is malformed ({exc!r})") from None
        files = d.get("files")
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ManifestError("files is not a mapping of name to sha256")
        for name in [m.file for m in members_t] + list(files):
            if not FILE_NAME.fullmatch(name) or name.startswith("."):
                raise ManifestError(f"{name!r} is not a file name of a version's folder")
        weights = tuple(float(w) for w in _list(d, "weights", (int, float)))
        if len(weights) != len(members_t) or not members_t:
            raise ManifestError(f"{len(members_t)} members but {len(weights)} weights")
        return cls(
            parent=_opt_str(d, "parent"),
            strategy=_str(d, "strategy"),
            params=_dict(d, "params"),
            seed=int(d.get("seed") or 0),
            model=str(d.get("model") or ""),
            batches_seen=tuple(_list(d, "batches_seen", str)),
            batches_trained=tuple(_list(d, "batches_trained", str, required=False)),
            metrics=_dict(d, "metrics"),
            current_metrics=_dict(d, "current_metrics"),
            train_seconds=float(d.get("train_seconds") or 0.0),
            execution=_dict(d, "execution") or {"mode": "local"},
            origin=_dict(d, "origin"),
            state=_dict(d, "state"),
            preprocessing=str(d.get("preprocessing") or ""),
            classes=tuple(_list(d, "classes", object, required=False)),
            features=tuple(_list(d, "features", str, required=False)),
            weights=weights,
            libraries=_dict(d, "libraries"),
            members=members_t,
            files=dict(files),
            version=_str(d, "version"),
            created=str(d.get("created") or ""),
            format_version=version,
        )


def lineage(start: str | None, manifest_of: Callable[[str], Manifest | None]) -> list[Manifest]:
    """`start`'s manifest and its ancestors', nearest first, following `parent`; it stops at a
    version `manifest_of` does not know (None: e.g. removed by `ctrain gc`)."""
    out: list[Manifest] = []
    seen: set[str] = set()
    while start is not None and start not in seen:
        seen.add(start)
        manifest = manifest_of(start)
        if manifest is None:
            break
        out.append(manifest)
        start = manifest.parent
    return out


def _str(d: dict[str, Any], key: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{key} is missing or not a string")
    return value


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    value = d.get(key)
    if value is not None and not isinstance(value, str):
        raise ManifestError(f"{key} is not a string")
    return value


def _dict(d: dict[str, Any], key: str) -> dict[str, Any]:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{key} is not a JSON object")
    return dict(value)


def _list(d: dict[str, Any], key: str, kind: Any, required: bool = True) -> list[Any]:
    value = d.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(_is(v, kind) for v in value):
        raise ManifestError(f"{key} is missing or not a list of the right kind")
    return value


def _is(value: Any, kind: Any) -> bool:
    if kind is object:
        return True
    return isinstance(value, kind) and not isinstance(value, bool)  # JSON true is not a number here
