"""What came back: delayed labels joined to what was served, and whether rows drifted."""

from __future__ import annotations

import argparse

from continual_trainer.cli.options import Commands, checked, command, duration, key_values, store_option
from continual_trainer.cli.output import agreement, emit, fmt, live_text, next_step
from continual_trainer.data.errors import UserError
from continual_trainer.trainer.params import Interval


def cmd_label(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    store = ct.open_store(args.store)
    r = store.label(
        args.data,
        key=args.key,
        label=args.label,
        late_after=args.late_after,
        promote=args.promote,
        min_shadow_rows=args.min_shadow_rows,
    )
    counts = (
        f"{r['labels']} label(s): {r['matched']} matched the prediction log, {r['unknown']} unknown, "
        f"{r['duplicated']} duplicated, {r['late']} late"
    )
    if r["batch"] is None:
        text = f"{counts}; nothing to ingest"
    else:
        live = "; ".join(f"{v}: {live_text(m)}" for v, m in r["live"].items())
        shadow = "; ".join(
            f"shadow {v}: {live_text(m)} (served: {live_text(m['served'])}{agreement(m)})"
            for v, m in r["shadow"].items()
        )
        kept = "ingested as batch" if r["added"] else "already in the store as batch"
        promoted = [f"promoted {r['promoted']} ({r['reason']})"] if r["promoted"] else []
        text = "\n".join(
            [
                f"{counts}",
                f"{kept} {r['batch']} ({r['matched']} rows)",
                f"live: {live}",
                *([shadow] if shadow else []),
                *promoted,
                next_step(f"update --store {args.store} --strategy finetune_new") + "  (learns the labelled rows)",
            ]
        )
    emit(args, "" if args.json else text, r)


def cmd_drift(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    if not args.data and not args.served:
        raise UserError.about("data", None, "give --data FILE (labelled rows) or --served (the rows serve answered)")
    store = ct.open_store(args.store)
    settings = key_values(args.trigger_set)
    r = store.drift(None if args.served else args.data, served=args.served, since=args.since,
                    trigger=args.trigger, **settings)  # fmt: skip
    lines = [
        f"{name}: {'fired' if d['fire'] else 'quiet'}, statistic {fmt(d.get('statistic'))}; {d.get('detail', '')}"
        for name, d in r.items()
        if isinstance(d, dict)
    ]
    head = f"{r['rows']} served row(s): " if "rows" in r else ""
    verdict = "drifted from what the current version learned" if r["fire"] else "no drift"
    if r["fire"] and args.data:  # labelled rows that drifted: learn them
        where = f"--store {args.store}"
        lines.append(next_step(f"ingest {where} {args.data}", f"update {where} --strategy finetune_all"))
    emit(args, "" if args.json else "\n".join([f"{head}{verdict}", *lines]), r)


def add(sub: Commands) -> None:
    """Declare label, drift."""
    c = command(sub, "label", cmd_label, "join delayed labels to the prediction log and ingest them", needs_tf=False)
    store_option(c)
    c.add_argument("--data", required=True, help="a file of keys and labels (Parquet, CSV or JSON Lines)")
    c.add_argument("--key", default="id", help="the key column (the served rows' ids; default id)")
    c.add_argument("--label", help="the label column (default: the store's label)")
    c.add_argument(
        "--late-after",
        type=duration,
        default=7 * 86400.0,
        help="count a label as late when its prediction is older than this (e.g. 12h, 7d; default 7d)",
    )
    c.add_argument(
        "--promote",
        choices=("never", "auto"),
        default="never",
        help="auto: promote a shadow candidate once its live metric beats the served one's (a tie keeps it)",
    )
    c.add_argument(
        "--min-shadow-rows",
        type=checked(Interval(int, 1)),
        default=500,
        help="labelled rows a shadow candidate needs before --promote auto may promote it (default 500)",
    )

    c = command(sub, "drift", cmd_drift, "ask the triggers whether rows drifted, keeping nothing", needs_tf=False)
    store_option(c)
    source = c.add_mutually_exclusive_group()
    source.add_argument("--data", help="a labelled file to judge (Parquet, CSV or JSON Lines)")
    source.add_argument("--served", action="store_true", help="judge the rows serve answered (the prediction log)")
    c.add_argument("--since", type=duration, help="with --served: only the rows of this last while, e.g. 24h")
    c.add_argument("--trigger", help="triggers (default performance,features; with --served, features)")
    c.add_argument(
        "--trigger-set", action="append", metavar="KEY=VALUE", help="a parameter for every trigger that has it"
    )
