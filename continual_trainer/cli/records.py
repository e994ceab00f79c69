"""The record: versions and their history, the report, promotion and rollback, MLflow's registry."""

from __future__ import annotations

import argparse
from typing import Any

from continual_trainer.cli.options import Commands, command, store_option, tracked, tracked_store, written
from continual_trainer.cli.output import agreement, emit, fmt, headline, live_text, next_step, short, tail


def cmd_history(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    rows = ct.open_store(args.store).versions()
    first = headline(rows[0]["metrics"] if rows else {})[0]
    extra, extra_title = ("roc_auc", "auc") if first == "accuracy" else ("r2", "r2")
    title = {"accuracy": "acc", "rmse": "rmse"}[first]
    lines = _history(rows, first, title, extra, extra_title, args.wide)
    if any(not r["same_holdout"] for r in rows):
        lines.append("† scored on other holdout rows than the current version (*): not directly comparable")
    for r in rows:
        for role, m in r["live"].items():
            beside = f" (served: {live_text(m['served'])}{agreement(m)})" if role == "shadow" else ""
            lines.append(f"live, {role}: {short(r['version'])} {live_text(m)}{beside}")
    emit(args, "" if args.json else "\n".join(lines), {"versions": rows})


def _history(
    rows: list[dict[str, Any]], first: str, title: str, extra: str, extra_title: str, wide: bool = False
) -> list[str]:
    """The versions as a table: in at most 100 columns the id's tail (what every command
    takes), strategy, parent, holdout size and score, forgetting, flips, promoted; `wide` adds
    full ids, a second metric, training seconds and the parameters."""
    width = 45 if wide else 20
    head = f"  {'version':{width}} {'strategy':13} {'parent':14} {'rows':>5} {title:>6} "
    head += (f"{extra_title:>6} " if wide else "") + f"{'forget':>6} {'flips':>6} "
    lines = [head + (f"{'secs':>6} promoted  params" if wide else "promoted")]
    for r in rows:
        m = r["metrics"]
        mark = "" if r["same_holdout"] else "†"
        version = r["version"] if wide else tail(r["version"], width)
        line = (
            f"{'*' if r['current'] else ' '} {version:{width}} {r['strategy'][:13]:13} {short(r['parent']):14} "
            f"{r['holdout_rows']:>5}{mark or ' '}{fmt(m.get(f'holdout_{first}')):>6} "
        )
        line += (f"{fmt(m.get(f'holdout_{extra}')):>6} " if wide else "") + (
            f"{fmt(r['forgetting']):>6} {fmt(r['negative_flip_rate']):>6} "
        )
        promoted = "yes" if r["promoted"] else "no"
        line += f"{fmt(r['train_seconds'], 2):>6} {promoted:8}  {r['params'][:60]}" if wide else promoted
        lines.append(line)
    return lines


def cmd_report(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    written = ct.open_store(args.store).write_report(args.out)
    where, page, files = written["folder"], written["page"], written["files"]
    emit(
        args,
        "" if args.json else f"report: {page}\nalso: {where}/report.md and {len(files) - 2} plot(s)",
        {
            "folder": where,
            "page": page,
            "files": files,
        },
    )


def cmd_promote(args: argparse.Namespace) -> None:
    store = tracked_store(args)
    previous = store.current
    version = store.promote(args.version, reason=args.reason or "")
    text = f"{version} is current" + (" already" if version == previous else f" (was {previous or '-'})")
    if version != previous:
        text += "\n" + next_step(f"rollback --store {args.store}") + "  (undoes it)"
    emit(args, "" if args.json else text, {"version": version, "previous": previous})


def cmd_rollback(args: argparse.Namespace) -> None:
    store = tracked_store(args)
    previous = store.current
    version = store.rollback(args.to, reason=args.reason or "")
    text = f"{version} is current (was {previous})\n" + next_step(f"rollback --store {args.store}") + "  (redoes it)"
    emit(args, "" if args.json else text, {"version": version, "previous": previous})


def cmd_mlflow(args: argparse.Namespace) -> None:
    store = tracked_store(args)
    r = store.mlflow_sync()
    text = f"MLflow: {r['model']}@champion is model version {r['model_version']}, the store's current {r['version']}"
    emit(args, "" if args.json else text, r)


def add(sub: Commands) -> None:
    """Declare history, report, promote, rollback, mlflow."""
    c = command(sub, "history", cmd_history, "versions, lineage and metrics", needs_tf=False)
    store_option(c)
    c.add_argument("--wide", action="store_true", help="every column: full ids, seconds, parameters")

    c = command(
        sub, "report", cmd_report, "the store's life on one HTML page and in Markdown, with plots", needs_tf=False
    )
    store_option(c)
    c.add_argument(
        "--out", type=written, help="folder or URI to write to (default: the store's reports/report-<time>/)"
    )

    c = command(sub, "promote", cmd_promote, "make a stored version current (compare-and-swap)", needs_tf=False)
    store_option(c)
    c.add_argument("version", help="an id, parent, or a unique prefix or suffix of an id")
    c.add_argument("--reason", help="why, kept in the store's event log")
    tracked(c)

    c = command(
        sub,
        "rollback",
        cmd_rollback,
        "undo the last promotion: what was current before is current again",
        needs_tf=False,
    )
    store_option(c)
    c.add_argument(
        "--to", metavar="VERSION", help="a version to make current instead; parent: the current version's parent"
    )
    c.add_argument("--reason", help="why, kept in the store's event log")
    tracked(c)

    c = command(
        sub,
        "mlflow",
        cmd_mlflow,
        "sync: put MLflow's alias champion on the current version, in the tracking store the store recorded "
        "(or --mlflow URI)",
        needs_tf=False,
    )
    c.add_argument("action", choices=("sync",), help="sync: the registry's champion follows CURRENT again")
    store_option(c)
    tracked(c)
