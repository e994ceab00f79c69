"""The reference experiment end to end."""

from __future__ import annotations

import argparse
import os
from typing import Any

from continual_trainer.cli.options import Commands, command, seed_option, where_flag, where_options
from continual_trainer.cli.output import emit, next_step


def cmd_demo(args: argparse.Namespace) -> None:
    import continual_trainer as ct
    from continual_trainer.trainer.progress import report

    total, done = len(ct.strategy_names()), []

    def step(row: dict[str, Any]) -> None:
        done.append(row)
        report("strategies", len(done), total, f"{row['strategy']}: acc {row['test_accuracy']:.3f}")

    r = ct.run_demo(args.store, seed=args.seed, ray=where_flag(args), executor=args.executor, on_result=step)
    best = max(r["results"], key=lambda row: (row["test_accuracy"], -row["test_log_loss"]))
    steps = [f"promote --store {r['store']} {best['version'][-4:]}", f"history --store {r['store']}"]
    example = "examples/sweep.yaml"  # the checkout's example, when run there
    if os.path.exists(example):
        steps.append(f"sweep --store {r['store']} --config {example}")
    steps.append(f"serve --store {r['store']}")
    rows = r["results"][0]
    held = f" ({int(rows['holdout_rows'])} rows)" if rows.get("holdout_rows") else ""
    explained = [
        f"kept: {len(r['results'])} versions, one per strategy; promoted: none (the demo compares: the first "
        "model stays current until you promote one)",
        f"this table scores the tutorial's separate test split ({rows['test_rows']} rows); `history` scores each "
        f"version on the store's holdout, a fifth of each batch{held}: other rows, so strategies within a point of "
        "each other may rank differently there",
        f"best here: {best['strategy']} ({best['test_accuracy']:.3f})",
    ]
    text = "\n".join(
        [r["table"], *explained, f"ran on: {r['executor']}", f"store: {r['store']}", f"report: {r['report']}",
         next_step(*steps)]
    )  # fmt: skip
    emit(
        args,
        "" if args.json else text,
        {"store": r["store"], "report": r["report"], "results": r["results"], "executor": r["executor"]},
    )


def add(sub: Commands) -> None:
    """Declare demo."""
    c = command(sub, "demo", cmd_demo, "the reference experiment end to end")
    c.add_argument("--store", help="store folder or URI (default: a new temporary folder)")
    seed_option(c)
    where_options(c)
