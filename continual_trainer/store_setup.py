"""Creating a store and bringing data and models to it: `init`, `ingest`, `split`, `inputs`.

Everything here raises UserError for mistakes a user can make.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import pyarrow as pa

from continual_trainer import strategies
from continual_trainer.data.batches import IngestResult, ingest, ingest_bytes, load_table, split_rows
from continual_trainer.data.errors import NewClassesRefused, UserError
from continual_trainer.data.manifest import Manifest
from continual_trainer.data.parquet import read_bytes, redact, same_file, table_from_bytes, write_table
from continual_trainer.data.schema import Schema
from continual_trainer.data.storage import NotAStore, Store, StoreMeta, batch_name, check_output
from continual_trainer.promotion import Promotion, UpdateOutcome, commit_version
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.loop import LoopConfig, train
from continual_trainer.trainer.models import (
    ModelSpec,
    build_model,
    check_model,
    feed,
    from_bytes,
    numeric_layout,
    to_bytes,
)
from continual_trainer.trials import evaluate_sets


def init_store(
    uri: str,
    data_uri: str,
    label: str,
    *,
    model: str | Any = "mlp:20,10",
    loop: LoopConfig | None = None,
    seed: int = 0,
    holdout_fraction: float = 0.2,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    task: str | None = None,
    train_imported: bool = False,
    features: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    data: bytes | None = None,
) -> UpdateOutcome:
    """Create a store from a first labelled batch and its first model.

    Args:
        model: a recipe (`mlp:20,10`, or a builder `package.module:function`), whose network
            is trained on the batch; or a trained model, a `.keras` file or a `keras.Model`,
            imported as it is (scored on the batch's holdout) unless `train_imported`, and kept
            as the recipe for fresh networks (its architecture, re-initialised, with its
            preprocessing state). A model with one input per numeric column is fed that way.
        shapes: tensor shapes of list columns, by column.
        task: `classification` or `regression` (default: regression for a float label with
            fractional values).
        features, ignore: which columns are features; the others are kept (see `data.schema`).
        data: the first batch's Parquet bytes, if already in memory (`data_uri` then names it).

    The model is trained before the store is written, so a run that fails or is
    interrupted while training leaves nothing. If an earlier `init` died after writing
    its store but before promoting its first version, this one finishes that store
    (with the same first batch) instead of refusing it.
    """
    loop = loop or LoopConfig()
    if not 0 <= holdout_fraction < 1:
        raise UserError.about("holdout", holdout_fraction, "must be in [0, 1)")
    architecture, model_name = _imported_model(model)
    imported = architecture is not None
    spec = ModelSpec((), "imported") if imported else ModelSpec.parse(model)
    if train_imported and not imported:
        raise UserError.about(
            "train", None, "applies to an imported model, a .keras file (a recipe's network is always trained)"
        )
    source = redact(data_uri)
    if data is None:
        data, table = load_table(data_uri)
    else:
        table = table_from_bytes(data, source)
    schema = Schema.infer(table, label, source, shapes=shapes, task=task, features=features, ignore=ignore)
    _refuse_existing_store(uri)
    batch = batch_name(1, data)
    start = time.perf_counter()
    net, schema = _first_network(architecture, model_name, spec, schema, seed)
    rows, holdout = split_rows(table, batch, 0, schema, holdout_fraction)
    trained = not imported or train_imported
    if trained:
        target_std = schema.target[1] if schema.target else 1.0
        train(net, feed(net, rows.x), rows.y, loop, seed=seed, task=schema.task, target_std=target_std)
    seconds = time.perf_counter() - start
    candidate = Candidate.single(net)
    metrics = evaluate_sets(candidate, {"holdout": holdout, "new": holdout}, schema.n_classes, [batch])

    store = Store.create(uri, StoreMeta(schema, str(spec), holdout_fraction), architecture)
    try:  # under the init claim until the first version is current (see Store.create)
        others = [b for b in store.batch_ids() if b != batch]
        if others:
            raise UserError(
                f"{store.display}: an init that did not finish left this store with another first batch "
                f"({others[0]}); run init again with that file, or use another --store"
            )
        added, _ = store.add_batch(
            data,
            {
                "source": source.rsplit("/", 1)[-1],
                "rows": table.num_rows,
                "ingested": dt.datetime.now(dt.timezone.utc).isoformat(),
            },
        )
        if added != batch:  # another init raced us here with other data
            raise UserError(f"{store.display}: another init is creating this store; use another --store")
        strategy = "init" if trained and not imported else "import" if not trained else "import+train"
        manifest = _first_manifest(strategy, spec, batch, metrics, loop if trained else None, seed, seconds, imported)
        version, promoted, reason = commit_version(
            store, candidate, manifest, Promotion("always"), by="init", wins=True
        )
    finally:
        store.release_init()
    return UpdateOutcome(version, None, strategy, promoted, reason, metrics, {}, manifest.train_seconds, 1)


def _first_network(
    architecture: bytes | None, model_name: str, spec: ModelSpec, schema: Schema, seed: int
) -> tuple[Any, Schema]:
    """The first version's network: the imported model (checked against the columns, fed one
    input per numeric column if it has them) or the recipe's, built; and the schema that feeds it."""
    if architecture is None:
        return build_model(spec, schema.input_spec(), schema.n_classes, seed, schema.target), schema
    net = from_bytes(architecture, source=model_name)
    numeric = [c.name for c in schema.columns if c.type.grouped]
    schema = replace(schema, numeric_inputs=numeric_layout(net, numeric))
    check_model(net, schema.input_spec(), schema.n_classes, model_name)
    return net, schema


def _first_manifest(
    strategy: str,
    spec: ModelSpec,
    batch: str,
    metrics: dict[str, Any],
    loop: LoopConfig | None,
    seed: int,
    seconds: float,
    imported: bool,
) -> Manifest:
    """The first version's manifest (`loop`: how it trained; None if imported as it was)."""
    return Manifest(
        parent=None,
        strategy=strategy,
        params=asdict(loop) if loop is not None else {},
        seed=seed,
        model=str(spec),
        batches_seen=(batch,),
        batches_trained=(batch,) if loop is not None else (),
        metrics=metrics,
        train_seconds=seconds if loop is not None else 0.0,
        preprocessing=(
            "the imported model's own (its adapted layers as saved)"
            if imported
            else "input statistics of the first batch (standard deviations of numeric columns floored at a tenth "
            "of their median); vocabularies: the first batch's"
        ),
    )


def _imported_model(model: Any) -> tuple[bytes | None, str]:
    """A trained model to import, as `.keras` bytes and a name for messages; None for a recipe.

    UserError for what cannot be imported: an object that is not a Keras model, a TensorFlow
    SavedModel folder (Keras 3 cannot load one as a model it can train)."""
    if isinstance(model, str):
        if os.path.isdir(model):
            saved = os.path.isfile(os.path.join(model, "saved_model.pb"))
            kind = "a TensorFlow SavedModel folder" if saved else "a folder"
            raise UserError.about(
                "model",
                redact(model),
                f"{kind}; ctrain imports a Keras model saved as one file: model.save('model.keras') where the "
                "model was built",
            )
        if model.endswith(".keras") or "/" in model or os.path.isfile(model):
            return read_bytes(model), f"--model {redact(model)}"
        return None, ""
    import keras

    if not isinstance(model, keras.Model):
        raise UserError(
            f"model: expected a keras.Model, a .keras file or a recipe such as 'mlp:20,10', got {type(model).__name__}"
        )
    try:
        return to_bytes(model), f"model {model.name!r}"
    except Exception as exc:  # the user's object: any way it cannot be saved is theirs to see
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(f"model {model.name!r}: Keras cannot save it ({first[:200]})") from None


def _refuse_existing_store(uri: str) -> None:
    """UserError if a store with a current model exists at `uri` (checked before any training)."""
    try:
        existing = Store.open(uri)
    except NotAStore:
        return
    if existing.current() is not None:
        raise UserError(f"{existing.display}: a store already exists here; use another --store")


def ingest_files(
    uri: str, batches: Sequence[str | tuple[str, bytes]], *, allow_new_classes: bool = False
) -> list[IngestResult]:
    """Validate and add each batch in turn (a file's URI, or a name and Parquet bytes already
    in memory); stop at the first bad one (it is quarantined)."""
    store = Store.open(uri)
    try:
        return [
            ingest(store, b, allow_new_classes=allow_new_classes)
            if isinstance(b, str)
            else ingest_bytes(store, *b, allow_new_classes=allow_new_classes)
            for b in batches
        ]
    except NewClassesRefused as exc:
        able = ", ".join(strategies.names(learns_new_classes=True))
        raise UserError(f"{exc}; strategies that can learn them: {able}") from None


def split_file(data_uri: str, train_uri: str, holdout_uri: str, *, holdout_fraction: float = 0.2) -> dict[str, Any]:
    """Write a first batch's rows as `init` will split them (the holdout is fixed by the file's
    bytes), so the model to import can be fitted on the training part only."""
    if not 0 < holdout_fraction < 1:
        raise UserError.about("holdout", holdout_fraction, "must be in (0, 1)")
    check_output(train_uri, "train_out", inputs=(data_uri,))
    check_output(holdout_uri, "holdout_out", inputs=(data_uri,))
    if same_file(train_uri, holdout_uri):
        raise UserError("the training and holdout outputs are the same file")
    from continual_trainer.data.sampling import holdout_mask

    data, table = load_table(data_uri)
    mask = holdout_mask(batch_name(1, data), table.num_rows, holdout_fraction)
    write_table(train_uri, table.filter(pa.array(~mask)))
    write_table(holdout_uri, table.filter(pa.array(mask)))
    return {"train_rows": int((~mask).sum()), "holdout_rows": int(mask.sum()), "holdout_fraction": holdout_fraction}


def expected_inputs(
    uri: str | None = None,
    *,
    data: str | None = None,
    label: str | None = None,
    layout: str = "grouped",
    table: pa.Table | None = None,
    **infer: Any,
) -> dict[str, Any]:
    """The inputs a store feeds its models (or, before a store exists, a first batch would):
    by name, each as `{shape, dtype, columns, keras}` with the `keras.Input(...)` line that
    takes it; `layout` `columns` gives one input per numeric column, as a model built that way
    is fed."""
    from continual_trainer.trainer.models import input_line

    if uri is not None:
        schema = Store.open(uri).schema
    else:
        if data is None or label is None:
            raise UserError("inputs: give a store, or a first batch's data and its label column")
        if table is None:
            _, table = load_table(data)
        schema = replace(Schema.infer(table, label, redact(data), **infer), numeric_inputs=layout)
    spec = schema.input_spec()
    return {
        name: {
            "shape": list(info.shape) or [1],
            "dtype": "string" if info.dtype == "string" else "float32",
            "columns": list(info.columns or (name,)),
            "vocabulary": len(info.vocabulary) if info.dtype == "string" else None,
            "keras": input_line(name, info),
        }
        for name, info in spec.items()
    }
