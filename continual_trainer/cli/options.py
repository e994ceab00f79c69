"""What every command's options are made of, declared once: the parser that turns a mistake into
one line and exit 2, the value types (sizes, durations, shapes, checked numbers), and the option
groups several commands share (the store, the seed, where work runs, the promotion gate, MLflow,
the memory budget). A room (`cli/<use case>.py`) declares its commands with these."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from continual_trainer.data.errors import UserError, terminal_safe
from continual_trainer.trainer.params import Constraint, Interval

EXIT_USER_ERROR = 2
EXIT_WORK_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM and SIGHUP exit with 128 + their number too

SEED = Interval(int, 0, 2**31 - 1)
HOLDOUT = Interval(float, 0, 1, high_open=True)

# The subcommands' action (`ArgumentParser.add_subparsers()`), to which each room adds its commands.
Commands = Any


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(terminal_safe(f"ctrain: error: {message} (see `{self.prog} --help`)"), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def command(
    sub: Commands, name: str, func: Callable[[argparse.Namespace], None], help_text: str, needs_tf: bool = True
) -> argparse.ArgumentParser:
    """A command with the options every command has (`--json`, `--quiet`) and its handler.
    `needs_tf`: TensorFlow is imported before the handler runs (under a progress line)."""
    c = sub.add_parser(name, help=help_text, description=help_text)
    c.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    c.add_argument("--quiet", action="store_true", help="no progress on stderr")
    c.set_defaults(func=func, needs_tf=needs_tf)
    return c


# -- value types --------------------------------------------------------------------------------


def size(raw: str) -> int:
    from continual_trainer.trainer.params import parse_size

    try:
        return parse_size(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration(raw: str) -> float:
    from continual_trainer.trainer.params import parse_duration

    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def written(raw: str) -> str:
    """The type of every flag naming a path a command writes (the API checks it with
    `data.storage.check_output`; tests/continual_trainer/test_outputs.py finds them all by it)."""
    return raw


def checked(constraint: Constraint) -> Any:
    """An argparse `type` parsing and checking an option by a declared constraint (see trainer.params)."""

    def parse(raw: str) -> Any:
        try:
            value = constraint.parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{raw!r}: {exc}") from None
        if not constraint.accepts(value):
            raise argparse.ArgumentTypeError(f"{raw!r}: must be {constraint.describe()}")
        return value

    return parse


def shape(raw: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = raw.partition("=")
    try:
        found = tuple(int(d) for d in dims.split(","))
    except ValueError:
        found = ()
    if not sep or not name or not found or min(found) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: expected COLUMN=D1,D2,... with whole numbers >= 1")
    return name, found


def key_values(pairs: Sequence[str] | None) -> dict[str, str]:
    """`--set key=value` (repeatable) as a mapping; the API parses the values."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {pair}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def column_names(raw: str | None) -> list[str] | None:
    """`--features a,b,x*` as names and patterns."""
    return [n.strip() for n in raw.split(",") if n.strip()] if raw else None


# -- option groups ------------------------------------------------------------------------------


def store_option(c: argparse.ArgumentParser) -> None:
    c.add_argument("--store", required=True, help="the store: a folder or URI (s3://bucket/prefix)")


def seed_option(c: argparse.ArgumentParser) -> None:
    c.add_argument("--seed", type=checked(SEED), default=0, help="fixes initialisation, sampling, shuffling")


def budgeted(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--memory-budget",
        type=size,
        metavar="SIZE",
        help="memory the training rows may take, e.g. 2GiB (default 192MiB of rows where the strategies can "
        "read the store in pieces, else a quarter of this machine's); above it they train on rows read from "
        "the store a chunk at a time",
    )


def judged(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--promote-on",
        choices=("holdout", "new"),
        default="holdout",
        help="what auto promotion compares on: every seen batch's held-out rows (default), or the new "
        "batches' only (for data that drifts, where the recent rows matter)",
    )


def gated(c: argparse.ArgumentParser) -> None:
    share = checked(Interval(float, 0, 1))
    c.add_argument(
        "--max-forgetting",
        type=share,
        metavar="X",
        help="auto promotion also refuses a version whose accuracy on an earlier batch fell more than X "
        "below the best before it (RMSE: rose more than X); default: no limit",
    )
    c.add_argument(
        "--max-flip-rate",
        type=share,
        metavar="X",
        help="... or whose share of holdout rows the current model gets right and it gets wrong exceeds X",
    )


def tracked(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--mlflow",
        metavar="URI",
        help="also log runs and register models at this MLflow tracking URI, e.g. sqlite:///mlflow.db "
        "(default: MLFLOW_TRACKING_URI if MLflow is installed)",
    )
    c.add_argument("--mlflow-model", metavar="NAME", help="the registered model (default ctrain-<store folder>)")


def tracked_store(args: argparse.Namespace) -> Any:
    """The store of a command declared `tracked`: mirrored to `--mlflow` (or MLFLOW_TRACKING_URI,
    or where the store recorded it mirrors)."""
    import continual_trainer as ct

    return ct.open_store(args.store, mlflow=args.mlflow, mlflow_from_env=True, mlflow_model=args.mlflow_model)


def where_options(c: argparse.ArgumentParser) -> None:
    """Where work runs, as for every command: this process unless a cluster is configured
    (RAY_ADDRESS, --address) or asked for (--ray, or --actors where there is one)."""
    group = c.add_mutually_exclusive_group()
    group.add_argument("--ray", action="store_true", help="run on Ray: RAY_ADDRESS's cluster, else a local one")
    group.add_argument("--address", metavar="HOST:PORT", help="run on the Ray cluster at this address")
    group.add_argument(
        "--local",
        action="store_true",
        help="run in this process even if RAY_ADDRESS is set (the default without it)",
    )
    group.add_argument(
        "--executor",
        metavar="NAME",
        help="run on the executor registered as NAME (local, ray, or a plugin's; --ray and --local are shorthands)",
    )


def where_flag(args: argparse.Namespace) -> bool | None:
    """Ray or not, from --ray / --address / --local, else None: Ray if RAY_ADDRESS is set (or,
    for update and predict, with --actors), this process otherwise; the rule of every command."""
    if getattr(args, "address", None):
        os.environ["RAY_ADDRESS"] = args.address  # this process's cluster, as RAY_ADDRESS names one
        return True
    if getattr(args, "ray", False):
        return True
    if getattr(args, "local", False):
        return False
    return None
