"""Streams: every new file in an inbox ingested and acted on, once."""

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
    written,
)
from continual_trainer.cli.output import emit, next_step
from continual_trainer.data.errors import UserError, terminal_safe
from continual_trainer.trainer.params import Interval


def cmd_stream(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    candidates = [c for c in args.candidates.split(",") if c] if args.candidates else None
    events: list[Any] = []
    where: list[str] = []

    def at(executor: str) -> None:
        if not where and not args.json:
            print(
                terminal_safe(f"stream: {args.inbox} -> {args.store}, policy {args.policy}, on {executor}"), flush=True
            )
        where.append(executor)

    def on_event(event: Any) -> None:
        events.append(event)
        if not args.json:
            print(terminal_safe(event.line()), flush=True)

    served: list[dict[str, Any]] = []

    def on_served(verdict: dict[str, Any]) -> None:
        served.append(verdict)
        if not args.json:
            said = "; ".join(f"{n}: {d.get('detail', '')}" for n, d in verdict.items() if isinstance(d, dict))
            state = "drifted from what the current version learned" if verdict["fire"] else "steady"
            head = f"served traffic ({verdict['rows']} rows, {verdict['from'][:19]} to {verdict['to'][:19]})"
            print(terminal_safe(f"{head}: {state}; {said}"), flush=True)

    recorded = tracked_store(args).stream(
        args.inbox,
        ct.StreamOptions(
            policy=args.policy,
            candidates=candidates,
            trigger=args.trigger,
            trigger_params=key_values(args.trigger_set),
            combine=args.trigger_combine,
            seed=args.seed,
            max_forgetting=args.max_forgetting,
            max_flip_rate=args.max_flip_rate,
            promote_on=args.promote_on,
            scale=not args.fixed_settings,
            memory_budget=args.memory_budget,
            label_key=args.label_key,
            watch_served=args.watch_served,
            archive=args.archive,
            once=args.once,
            interval=args.interval,
        ),
        ray=where_flag(args),
        executor=args.executor,
        on_where=at,
        on_event=on_event,
        on_served=on_served,
        params=key_values(args.set),
    )
    if events and all(e.status in ("rejected", "failed") for e in events):
        raise UserError(f"none of the {len(events)} new file(s) was learned; first: {events[0].line()}")
    text = (
        "" if args.json or not args.once else next_step(f"report --store {args.store}") + "  (the stream on one page)"
    )
    emit(args, text, {"events": recorded, "executor": where[-1], **({"served": served} if args.watch_served else {})})


def add(sub: Commands) -> None:
    """Declare stream."""
    # stream and predict import TensorFlow only when they load a model through Keras (a plain
    # Dense stack scores without it: a quiet stream file or a day's predictions need none)
    c = command(sub, "stream", cmd_stream, "ingest and update on every new Parquet file in an inbox", needs_tf=False)
    store_option(c)
    c.add_argument("--inbox", required=True, help="folder or URI watched for *.parquet")
    c.add_argument(
        "--policy",
        default="best",
        help="a strategy name, or best (default): train --candidates in "
        "parallel and promote the winner if it beats the current model",
    )
    c.add_argument("--candidates", help="comma-separated strategies for --policy best")
    c.add_argument(
        "--label-key",
        metavar="COL",
        help="files with this column and the label but no features are delayed labels, joined to the prediction log",
    )
    c.add_argument(
        "--archive", metavar="DIR", type=written, help="move each processed inbox file here (default: it stays)"
    )
    c.add_argument(
        "--watch-served",
        action="store_true",
        help="also judge the traffic serve logged since the last look (the label-free triggers, else features)",
    )
    c.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a parameter for every strategy that has it (repeatable)"
    )
    c.add_argument(
        "--trigger",
        default="always",
        help="when to update: always (default), every, performance, features, or several comma-separated",
    )
    c.add_argument(
        "--trigger-set", action="append", metavar="KEY=VALUE", help="a parameter for every trigger that has it"
    )
    c.add_argument("--trigger-combine", choices=("any", "all"), default="any", help="several triggers: any or all")
    c.add_argument(
        "--fixed-settings",
        action="store_true",
        help="train with the strategies' settings as they are; by default, above 5,000 training rows, the "
        "batch size, learning rate, early stopping and a time budget are sized to the rows (not what --set gives)",
    )
    c.add_argument("--once", action="store_true", help="process what is in the inbox now, then exit")
    c.add_argument(
        "--interval", type=checked(Interval(float, 0, low_open=True)), default=5.0, help="seconds between polls"
    )
    seed_option(c)
    gated(c)
    judged(c)
    tracked(c)
    budgeted(c)
    where_options(c)
