"""The store's life: create it, add batches, look at them, retire one, check it, clean it."""

from __future__ import annotations

import argparse

from continual_trainer.cli.options import (
    HOLDOUT,
    Commands,
    checked,
    column_names,
    command,
    seed_option,
    shape,
    store_option,
    tracked,
    written,
)
from continual_trainer.cli.output import emit, outcome_text
from continual_trainer.data.errors import UserError, terminal_safe
from continual_trainer.trainer.params import Interval


def cmd_init(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    store = ct.init_store(
        args.store,
        args.data,
        args.label,
        model=args.model,
        features=column_names(args.features),
        ignore=column_names(args.ignore),
        shapes=dict(args.shape or []),
        task=args.task,
        train=args.train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        holdout=args.holdout,
        seed=args.seed,
        mlflow=args.mlflow,
        mlflow_model=args.mlflow_model,
    )
    o = store.last_outcome
    payload = o.to_json()
    text = "" if args.json else outcome_text(o)
    if o.strategy == "import":  # scored as it is: fair only on rows it was not fitted on
        payload["note"] = IMPORT_NOTE.format(data=args.data)
        text += "\nnote: " + payload["note"]
    emit(args, text, payload)


IMPORT_NOTE = (
    "the holdout score above is fair only if the model was not fitted on the holdout rows, which the store "
    "cannot know; `ctrain split --data {data} --out-train T --out-holdout H` writes the exact split this "
    "store uses: fit the model on T"
)


def cmd_ingest(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    results = ct.open_store(args.store).ingest(list(args.files), new_classes=args.new_classes)
    lines = []
    for path, r in zip(args.files, results, strict=True):
        state = "added as" if r.added else "already in the store as"
        extra = f", new classes {list(r.new_classes)}" if r.new_classes else ""
        lines.append(f"{terminal_safe(path)}: {r.rows} rows {state} batch {r.batch_id}{extra}")
    payload = {
        "batches": [
            {"batch": r.batch_id, "rows": r.rows, "added": r.added, "new_classes": list(r.new_classes)} for r in results
        ]
    }
    emit(args, "" if args.json else "\n".join(lines), payload)


def cmd_inputs(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    if args.store:
        spec = ct.expected_inputs(args.store)
    elif args.data and args.label:
        spec = ct.expected_inputs(
            data=args.data,
            label=args.label,
            per_column=args.per_column,
            features=column_names(args.features),
            ignore=column_names(args.ignore),
            shapes=dict(args.shape or []),
        )
    else:
        raise UserError("inputs: give --store, or --data and --label for a store not yet made")
    lines = ["import keras", "", "inputs = {"]
    for name, info in spec.items():
        cols = info["columns"]
        about = f"  # {', '.join(cols[:6])}{', ...' if len(cols) > 6 else ''}" if cols != [name] else ""
        if info["vocabulary"] is not None:
            about = f"  # {info['vocabulary']} values so far; map them with StringLookup (others go to its OOV bucket)"
        lines.append(f'    "{name}": {info["keras"]},{about}')
    lines.append("}")
    emit(args, "" if args.json else "\n".join(lines), {"inputs": spec})


def cmd_split(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    r = ct.split_file(args.data, args.out_train, args.out_holdout, holdout=args.holdout)
    text = (
        f"wrote {r['train_rows']} training rows to {args.out_train} and {r['holdout_rows']} holdout rows to "
        f"{args.out_holdout}: fit your model on the first, then `ctrain init --data {args.data} --model ...`"
    )
    emit(args, "" if args.json else text, r)


def cmd_batches(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    rows = ct.open_store(args.store).batches()
    lines = [f"  {'batch':22} {'rows':>7}  {'ingested':19}  {'learned':7}  source"]
    for r in rows:
        state = f"  retired: {terminal_safe(r['retired'].get('reason') or '-')}" if r["retired"] else ""
        when = str(r["ingested"] or "")[:19].replace("T", " ")
        lines.append(
            f"  {r['batch']:22} {r['rows']:>7}  {when:19}  {'yes' if r['learned_by_current'] else 'no':7}  "
            f"{terminal_safe(str(r['source']))}{state}"
        )
    emit(args, "" if args.json else "\n".join(lines), {"batches": rows})


def cmd_drop(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    batch = ct.open_store(args.store).drop(args.batch, reason=args.reason or "")
    text = f"batch {batch} retired: kept in the store and in every lineage, never trained on or scored again"
    emit(args, "" if args.json else text, {"batch": batch, "retired": True})


def cmd_verify(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    store = ct.open_store(args.store)
    problems, notes = store.verify()
    lines = [f"problem: {p}" for p in problems] + [f"note: {n}" for n in notes]
    lines.append(f"{store.display}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    emit(args, "" if args.json else "\n".join(lines), {"ok": not problems, "problems": problems, "notes": notes})
    if problems:
        raise StoreDamaged(f"{store.display}: {len(problems)} problem(s); first: {problems[0]}")


class StoreDamaged(Exception):
    """`verify` found problems: exit 1 (not the user's mistake), after the full list."""


def cmd_gc(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    doomed = ct.open_store(args.store).gc(args.keep, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    text = f"{verb} {len(doomed)} version(s) never promoted" + "".join(f"\n  {v}" for v in doomed)
    emit(args, "" if args.json else text, {"deleted": doomed, "dry_run": args.dry_run})


def add(sub: Commands) -> None:
    """Declare init, ingest, inputs, split, batches, drop, verify, gc."""
    _add_init(sub)
    c = command(
        sub, "ingest", cmd_ingest, "validate and add new batches (Parquet, CSV or JSON Lines files)", needs_tf=False
    )
    store_option(c)
    c.add_argument("--new-classes", action="store_true", help="accept labels the store has not seen")
    c.add_argument("files", nargs="+", metavar="PARQUET")

    c = command(sub, "inputs", cmd_inputs, "the inputs a store feeds a model, as keras.Input lines", needs_tf=False)
    c.add_argument("--store", help="an existing store")
    c.add_argument("--data", help="before a store exists: its first batch")
    c.add_argument("--label", help="with --data: the label column")
    c.add_argument(
        "--per-column", action="store_true", help="with --data: one input per numeric column instead of one group"
    )
    c.add_argument("--features", metavar="COL,...", help="with --data: as for init")
    c.add_argument("--ignore", metavar="COL,...", help="with --data: as for init")
    c.add_argument("--shape", action="append", type=shape, metavar="COL=D1,D2,...", help="with --data: as for init")

    c = command(
        sub,
        "split",
        cmd_split,
        "write a first batch's training and holdout rows as init will split them",
        needs_tf=False,
    )
    c.add_argument("--data", required=True, help="the file you will give init --data (Parquet, CSV or JSON Lines)")
    c.add_argument("--out-train", required=True, type=written, help="Parquet file for the training rows")
    c.add_argument("--out-holdout", required=True, type=written, help="Parquet file for the holdout rows")
    c.add_argument(
        "--holdout", type=checked(HOLDOUT), default=0.2, help="the fraction init will hold out (its --holdout)"
    )

    c = command(sub, "batches", cmd_batches, "the store's batches: rows, when, learned, retired", needs_tf=False)
    store_option(c)

    c = command(
        sub, "drop", cmd_drop, "retire a batch: kept on disk and in lineage, never trained on again", needs_tf=False
    )
    store_option(c)
    c.add_argument("batch", help="a batch id, or a unique prefix or suffix of one (see `ctrain batches`)")
    c.add_argument("--reason", help="why, kept in the store's event log")

    c = command(
        sub,
        "verify",
        cmd_verify,
        "check every file against its sha256, CURRENT and the lineage (exit 1 on problems)",
        needs_tf=False,
    )
    store_option(c)

    c = command(sub, "gc", cmd_gc, "delete old versions that were never promoted", needs_tf=False)
    store_option(c)
    c.add_argument(
        "--keep", type=checked(Interval(int, 0)), default=5, help="never-promoted versions to keep, newest first"
    )
    c.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")


def _add_init(sub: Commands) -> None:
    c = command(sub, "init", cmd_init, "create a store from a first batch and train its first model")
    tracked(c)
    store_option(c)
    c.add_argument("--data", required=True, help="the first batch: a Parquet, CSV or JSON Lines file")
    c.add_argument("--label", required=True, help="the label column")
    c.add_argument(
        "--model",
        default="mlp:20,10",
        help="mlp:UNITS,... (default mlp:20,10), a builder package.module:function, or a trained FILE.keras "
        "to import as the first version",
    )
    c.add_argument("--train", action="store_true", help="with --model FILE.keras: train it on the batch first")
    cols = c.add_mutually_exclusive_group()
    cols.add_argument(
        "--features",
        metavar="COL,...",
        help="the feature columns (names or patterns like x*); every other column is kept, not trained on",
    )
    cols.add_argument(
        "--ignore",
        metavar="COL,...",
        help="columns (names or patterns) to keep in the store and pass through predict, not train on",
    )
    c.add_argument(
        "--shape",
        action="append",
        type=shape,
        metavar="COL=D1,D2,...",
        help="the shape of a list column's values, e.g. image=28,28,1 (repeatable; default: the list's length)",
    )
    c.add_argument(
        "--task",
        choices=("classification", "regression"),
        help="default: regression for a float label with fractional values or over 20 distinct ones",
    )
    c.add_argument("--epochs", type=int, default=150)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--learning-rate", type=float, default=0.01)
    c.add_argument(
        "--holdout", type=checked(HOLDOUT), default=0.2, help="fraction of each batch held out for evaluation"
    )
    seed_option(c)
