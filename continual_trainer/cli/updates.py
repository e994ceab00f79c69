"""Updating the current model: one strategy, or several side by side."""

from __future__ import annotations

import argparse
from typing import Any

from continual_trainer.cli.options import (
    Commands,
    budgeted,
    checked,
    command,
    gated,
    judged,
    key_values,
    seed_option,
    store_option,
    tracked,
    tracked_store,
    where_flag,
    where_options,
)
from continual_trainer.cli.output import after_outcome, emit, fmt, headline, next_step, outcome_text
from continual_trainer.data.errors import UserError
from continual_trainer.trainer.params import Interval


def cmd_update(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    settings = key_values(args.set)
    names = [n.strip() for n in args.strategy.split(",") if n.strip()]
    # The strategy and its parameters are parsed once, by the update, before it starts TensorFlow.
    store = tracked_store(args)
    common = {
        "promote": args.promote,
        "seed": args.seed,
        "max_forgetting": args.max_forgetting,
        "max_flip_rate": args.max_flip_rate,
        "promote_on": args.promote_on,
        "memory_budget": args.memory_budget,
        "ray": where_flag(args),
        "executor": args.executor,
    }
    try:
        if len(names) > 1:
            if args.actors:
                raise UserError.about("actors", args.actors, "trains one strategy; give one --strategy")
            several = store.compare(names, **common, **settings)
            emit(args, "" if args.json else _several_text(several, args.store), _several_json(several))
            return
        o = store.update(names[0], actors=args.actors, sync_steps=args.sync_steps, **common, **settings)
    except ct.NothingNew as exc:  # a scheduled or retried updater with nothing to do succeeds
        emit(args, "" if args.json else str(exc), {"version": None, "promoted": False, "reason": str(exc)})
        return
    emit(args, "" if args.json else outcome_text(o) + "\n" + after_outcome(o, args.store), o.to_json())


def _several_text(outcomes: Any, where: str) -> str:
    """Several strategies' versions side by side, in the order given, and what was promoted."""
    first, second = headline(outcomes[0].metrics)
    current = outcomes[0].current_metrics.get(f"holdout_{first}")
    lines = [f"  {'strategy':14} {'version':40} {first[:8]:>8} {second[:8]:>8} {'secs':>6}  promoted"]
    for o in outcomes:
        m = o.metrics
        lines.append(
            f"{'*' if o.promoted else ' '} {o.strategy:14} {o.version:40} {fmt(m.get(f'holdout_{first}')):>8} "
            f"{fmt(m.get(f'holdout_{second}')):>8} {o.train_seconds:6.1f}  "
            f"{'yes' if o.promoted else 'no'} ({o.reason})"
        )
    lines.append(f"holdout {first} of the current version before: {fmt(current)}; every strategy is kept as a version")
    lines += [f"failed: {f}" for f in outcomes.failed]
    promoted = next((o for o in outcomes if o.promoted), None)
    if promoted is None:
        lines.append(
            next_step(f"promote --store {where} {outcomes[outcomes.best].version[-4:]}")
            + "  (makes the best one current)"
        )
    else:
        lines.append(next_step(f"rollback --store {where}") + "  (undoes the promotion)")
    return "\n".join(lines)


def _several_json(outcomes: Any) -> dict[str, Any]:
    promoted = next((o.version for o in outcomes if o.promoted), None)
    return {
        "versions": [o.to_json() for o in outcomes],
        "version": promoted,
        "promoted": promoted is not None,
        "failed": outcomes.failed,
    }


def add(sub: Commands) -> None:
    """Declare update."""
    c = command(
        sub,
        "update",
        cmd_update,
        "run one strategy on the batches that arrived since the current model",
        needs_tf=False,  # the update starts TensorFlow once the strategy, its parameters and new data are known
    )
    store_option(c)
    c.add_argument("--strategy", required=True)
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="a strategy parameter (repeatable)")
    c.add_argument("--promote", choices=("auto", "always", "never"), default="auto")
    seed_option(c)
    c.add_argument(
        "--actors",
        type=checked(Interval(int, 0)),
        default=0,
        help="train data-parallel on N Ray actors, as the strategy declares (model averaging or bagging)",
    )
    c.add_argument(
        "--sync-steps",
        type=checked(Interval(int, 1)),
        default=100,
        help="with --actors and model averaging: every K steps",
    )
    budgeted(c)
    gated(c)
    judged(c)
    tracked(c)
    where_options(c)
