"""Sweeps: strategies x parameters x seeds, here or on Ray Tune."""

from __future__ import annotations

import argparse
import sys

from continual_trainer.cli.options import (
    Commands,
    budgeted,
    command,
    gated,
    store_option,
    tracked,
    tracked_store,
    where_flag,
    where_options,
)
from continual_trainer.cli.output import after_outcome, emit, next_step, outcome_text
from continual_trainer.data.errors import UserError, terminal_safe


def cmd_sweep(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    if not args.config and not args.resume:
        raise UserError("sweep: give --config SWEEP.yaml, or --resume SWEEP_ID")
    store = tracked_store(args)
    r = store.sweep(
        args.config,
        resume=args.resume,
        ray=where_flag(args),
        executor=args.executor,
        promote_best=args.promote == "best",
        max_forgetting=args.max_forgetting,
        max_flip_rate=args.max_flip_rate,
        memory_budget=args.memory_budget,
    )
    early = f" ({r.stopped} stopped early by ASHA)" if r.stopped else ""
    done = f"{r.finished} of {r.trials} trials finished{early} on {r.where}"
    lines = [f"sweep {r.sweep_id}: {done}; results in {r.folder}"]
    first = ct.metric_names(store.schema.task)[0]
    for row in r.summary(store.schema.task):
        mean, std = row[f"holdout_{first}"]
        value = "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"
        lines.append(f"  {row['strategy']:13} {row['params']:40} holdout {first} {value}")
    for trial_id, failure in r.failures:
        print(terminal_safe(f"ctrain: warning: trial {trial_id} failed: {failure.message}"), file=sys.stderr)
    winner = store.last_outcome if args.promote == "best" else None
    if winner is not None:
        lines += [
            "best configuration, trained as a version:",
            outcome_text(winner),
            after_outcome(winner, args.store),
        ]
    elif r.finished:
        promote = f"sweep --store {args.store} --resume {r.sweep_id} --promote best"
        lines.append(
            next_step(promote) + "  (trains the best configuration as a version, promoted if it beats the current one)"
        )
    emit(
        args,
        "" if args.json else "\n".join(lines),
        {
            "sweep": r.sweep_id,
            "folder": r.folder,
            "trials": r.trials,
            "finished": r.finished,
            "stopped_early": r.stopped,
            "failed": len(r.failures),
            "executor": r.where,
            **({"winner": winner.to_json()} if winner else {}),
        },
    )


def add(sub: Commands) -> None:
    """Declare sweep."""
    c = command(sub, "sweep", cmd_sweep, "strategies x parameters x seeds, side by side (on Ray Tune with --ray)")
    store_option(c)
    c.add_argument("--config", help="sweep YAML (see examples/sweep.yaml)")
    c.add_argument("--resume", metavar="SWEEP_ID", help="finish an interrupted sweep without redoing finished trials")
    c.add_argument(
        "--promote",
        choices=("best",),
        help="best: train the winning configuration as a version and promote it if it beats the current one",
    )
    budgeted(c)
    gated(c)
    tracked(c)
    where_options(c)
