"""Model versions in and out of the store: a candidate's members as `.keras` files and its manifest."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from importlib import metadata

from continual_trainer.data.manifest import Manifest
from continual_trainer.data.storage import Store
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.models import model_classes, to_bytes


@dataclass(frozen=True)
class StoredCandidate:
    """A version's members as the `.keras` bytes the store holds, and their weights.

    This is what crosses process boundaries: workers load it themselves, so the driver
    never needs TensorFlow to ship a model.
    """

    files: tuple[bytes, ...]
    weights: tuple[float, ...]

    def load(self) -> Candidate:
        """The members, each loaded in Keras safe mode."""
        return Candidate.from_files(list(self.files), self.weights)

    @classmethod
    def of(cls, candidate: Candidate) -> StoredCandidate:
        return cls(tuple(to_bytes(m) for m in candidate.members), candidate.weights)


def stored_candidate(store: Store, version: str) -> StoredCandidate:
    """A stored version's member files (each checked against its sha256) and weights, without Keras."""
    manifest = store.manifest(version)
    return StoredCandidate(tuple(store.read_member(version, m.file) for m in manifest.members), manifest.weights)


def load_candidate(store: Store, version: str) -> Candidate:
    """A stored version's members, each checked against its sha256 and loaded in safe mode."""
    return stored_candidate(store, version).load()


def save_candidate(store: Store, version: str, candidate: Candidate, manifest: Manifest) -> Manifest:
    """Commit `candidate` as `version`: its members, then `manifest` completed with what the
    store and this process know (classes, features, weights, library versions)."""
    regression = store.schema.is_regression
    members = [(to_bytes(m), 0 if regression else model_classes(m)) for m in candidate.members]
    manifest = dataclasses.replace(
        manifest,
        classes=tuple(store.schema.classes),
        features=tuple(store.schema.features),
        weights=tuple(candidate.weights),
        libraries=libraries(),
    )
    return store.write_version(version, members, manifest)


def libraries() -> dict[str, str]:
    """Versions of the libraries a model was trained with, for its manifest."""
    out = {}
    for name in ("continual-trainer", "tensorflow-cpu", "tensorflow", "keras", "numpy", "pyarrow", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out
