"""Model versions in and out of the store: a candidate's members as `.keras` files and its manifest."""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import Manifest
from continual_trainer.data.storage import Store
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.models import model_classes, to_bytes

_LOADED: dict[tuple[tuple[bytes, ...], tuple[float, ...]], tuple[Any, ...]] = {}
_KEEP_LOADED = 2


@dataclass(frozen=True)
class StoredCandidate:
    """A version's members as the `.keras` bytes the store holds, and their weights.

    This is what crosses process boundaries: workers load it themselves, so the driver
    never needs TensorFlow to ship a model.
    """

    files: tuple[bytes, ...]
    weights: tuple[float, ...]
    state: Mapping[str, np.ndarray] = field(default_factory=dict)

    def load(self) -> Candidate:
        """The members, each loaded in Keras safe mode, with the version's state.

        The last few loaded are kept: a stream scores and updates the same current version
        for each file, and loading a `.keras` file costs more than most scoring. Nothing may
        change a loaded member in place (strategies train copies; the contract tests check)."""
        key = (self.files, self.weights)
        members = _LOADED.pop(key, None)
        if members is None:
            members = Candidate.from_files(list(self.files), self.weights).members
        _LOADED[key] = members
        while len(_LOADED) > _KEEP_LOADED:
            _LOADED.pop(next(iter(_LOADED)))
        return Candidate(members, self.weights, dict(self.state))

    def for_scoring(self) -> Candidate:
        """The candidate to score with: plain Dense stacks read straight from their files and
        computed in NumPy (`trainer.light`: no TensorFlow to import), any other member through
        Keras (`load`). Never to train: strategies take `load`'s Keras models."""
        from continual_trainer.trainer.light import read

        light = [read(f) for f in self.files]
        if any(member is None for member in light):
            return self.load()
        return Candidate(tuple(light), self.weights, dict(self.state))

    @classmethod
    def of(cls, candidate: Candidate) -> StoredCandidate:
        return cls(tuple(to_bytes(m) for m in candidate.members), candidate.weights, dict(candidate.state))


def stored_candidate(store: Store, version: str) -> StoredCandidate:
    """A stored version's member files and state arrays (each checked against its sha256) and
    weights, without Keras."""
    manifest = store.manifest(version)
    files = tuple(store.read_member(version, m.file) for m in manifest.members)
    state = {key: _array(store, version, name) for key, name in state_files(manifest).items()}
    return StoredCandidate(files, manifest.weights, state)


def state_files(manifest: Manifest) -> dict[str, str]:
    """A version's state arrays: key -> file name in its folder."""
    files = manifest.state.get("files", {})
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def _array(store: Store, version: str, name: str) -> np.ndarray:
    data = store.read_member(version, name)  # checked against its sha256
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"{store.display}: {version}/{name} is not a NumPy array without pickles ({exc})") from None


def array_bytes(array: np.ndarray) -> bytes:
    """An array as `.npy` bytes, refusing anything that would need pickle to read back."""
    array = np.asarray(array)
    if array.dtype.kind == "O":  # strings of categorical inputs: fixed-width unicode instead
        array = array.astype(str)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def load_candidate(store: Store, version: str) -> Candidate:
    """A stored version's members, each checked against its sha256 and loaded in safe mode."""
    return stored_candidate(store, version).load()


def save_candidate(store: Store, version: str, candidate: Candidate, manifest: Manifest) -> Manifest:
    """Commit `candidate` as `version`: its members, then `manifest` completed with what the
    store and this process know (classes, features, weights, library versions)."""
    regression = store.schema.is_regression
    members = [(to_bytes(m), 0 if regression else model_classes(m)) for m in candidate.members]
    names = {key: f"state-{i}.npy" for i, key in enumerate(sorted(candidate.state))}
    extra = {names[key]: array_bytes(candidate.state[key]) for key in names}
    state = dict(manifest.state)
    if names:
        from continual_trainer.strategies.registry import describe_state

        state.update({"files": names, **describe_state(candidate.state, store.batch_ids())})
    manifest = dataclasses.replace(
        manifest,
        classes=tuple(store.schema.classes),
        features=tuple(store.schema.features),
        weights=tuple(candidate.weights),
        libraries=libraries(),
        state=state,
    )
    return store.write_version(version, members, manifest, extra)


def libraries() -> dict[str, str]:
    """Versions of the libraries a model was trained with, for its manifest."""
    out = {}
    for name in ("continual-trainer", "tensorflow-cpu", "tensorflow", "keras", "numpy", "pyarrow", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out
