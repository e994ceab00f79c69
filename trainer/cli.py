"""The `ctrain` command line. Mistakes a user can make end with one line and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from data.errors import UserError
from trainer.params import Constraint, Interval

EXIT_USER_ERROR = 2
EXIT_WORK_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM and SIGHUP exit with 128 + their number too


class Terminated(Exception):
    """SIGTERM or SIGHUP arrived (raised in the main thread by `ctrain`'s handler)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"ctrain: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


SEED = Interval(int, 0, 2**31 - 1)
HOLDOUT = Interval(float, 0, 1, high_open=True)


def _checked(constraint: Constraint) -> Any:
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


def _shape(raw: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = raw.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: expected COLUMN=D1,D2,... with whole numbers >= 1")
    return name, shape


def _settings(pairs: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {pair}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras with file descriptor 2 pointed at /dev/null.

    TensorFlow's C++ runtime prints start-up notices (oneDNN, absl) straight to
    fd 2, whatever TF_CPP_MIN_LOG_LEVEL says; users would see them above every
    message, and scripts reading stderr would get more than one line.
    """
    if "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _emit(args: argparse.Namespace, text: str, payload: dict[str, Any]) -> None:
    if text:
        print(text)
    if args.json:
        print(json.dumps(payload, default=str, sort_keys=True))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _headline(metrics: dict[str, Any]) -> tuple[str, str]:
    """The two metrics a version is judged by: RMSE and MAE for regression, else accuracy and log loss."""
    from trainer.evaluate import headline

    return headline("regression" if any(k.endswith("_rmse") for k in metrics) else "classification")


def _outcome_text(o: Any) -> str:
    m, c = o.metrics, o.current_metrics
    first, second = _headline(m)
    lines = [f"version {o.version} ({o.strategy}, parent {o.parent or '-'})"]
    if f"holdout_{first}" in m:
        lines.append(
            f"holdout {first.replace('_', ' ')} {_fmt(m[f'holdout_{first}'])} "
            f"(current {_fmt(c.get(f'holdout_{first}'))}), {second.replace('_', ' ')} {_fmt(m[f'holdout_{second}'])}"
        )
    lines.append(f"trained in {o.train_seconds:.2f} s, {o.members} member(s)")
    lines.append(f"promoted: {'yes' if o.promoted else 'no'} ({o.reason})")
    return "\n".join(lines)


def cmd_init(args: argparse.Namespace) -> None:
    from trainer.commands import init_store
    from trainer.loop import LoopConfig

    try:
        loop = LoopConfig(args.epochs, args.batch_size, args.learning_rate)
    except ValueError as exc:
        raise UserError(f"init: {exc}") from None
    o = init_store(
        args.store,
        args.data,
        args.label,
        model=args.model,
        loop=loop,
        seed=args.seed,
        holdout_fraction=args.holdout,
        shapes=dict(args.shape or []),
        task=args.task,
        train_imported=args.train,
    )
    _emit(args, "" if args.json else _outcome_text(o), o.to_json())


def cmd_ingest(args: argparse.Namespace) -> None:
    from trainer.commands import ingest_files

    results = ingest_files(args.store, args.files, allow_new_classes=args.new_classes)
    lines = []
    for path, r in zip(args.files, results, strict=True):
        state = "added as" if r.added else "already in the store as"
        extra = f", new classes {list(r.new_classes)}" if r.new_classes else ""
        lines.append(f"{path}: {r.rows} rows {state} batch {r.batch_id}{extra}")
    payload = {
        "batches": [
            {"batch": r.batch_id, "rows": r.rows, "added": r.added, "new_classes": list(r.new_classes)} for r in results
        ]
    }
    _emit(args, "" if args.json else "\n".join(lines), payload)


def cmd_update(args: argparse.Namespace) -> None:
    import strategies
    from data.storage import Store
    from trainer.commands import update
    from trainer.executor import make_executor
    from trainer.updatedata import NothingNew

    strategies.get(args.strategy).make_params(_settings(args.set))  # fail fast, before TensorFlow loads
    store = Store.open(args.store)
    try:
        o = update(
            store,
            args.strategy,
            _settings(args.set),
            seed=args.seed,
            promote=args.promote,
            executor=make_executor(ray=bool(args.actors) or None, actors=args.actors),
            actors=args.actors,
            sync_steps=args.sync_steps,
        )
    except NothingNew as exc:  # a scheduled or retried updater with nothing to do succeeds
        _emit(args, "" if args.json else str(exc), {"version": None, "promoted": False, "reason": str(exc)})
        return
    _emit(args, "" if args.json else _outcome_text(o), o.to_json())


def cmd_predict(args: argparse.Namespace) -> None:
    from trainer.commands import predict
    from trainer.executor import LocalExecutor, make_executor

    executor = make_executor(ray=True, actors=args.actors) if args.actors else LocalExecutor()
    r = predict(args.store, args.data, args.out, version=args.version, executor=executor)
    _emit(args, "" if args.json else f"wrote {r['rows']} predictions of version {r['version']} to {r['out']}", r)


def cmd_history(args: argparse.Namespace) -> None:
    from trainer.commands import history

    rows = history(args.store)
    first = _headline(rows[0]["metrics"] if rows else {})[0]
    title = {"accuracy": "holdout acc", "rmse": "holdout rmse"}[first]
    lines = [f"{'':1} {'version':45} {'strategy':13} {'parent':45} {title:>12} {'seconds':>8}"]
    for r in rows:
        lines.append(
            f"{'*' if r['current'] else ' ':1} {r['version']:45} {r['strategy']:13} {r['parent'] or '-':45} "
            f"{_fmt(r['metrics'].get(f'holdout_{first}')):>12} {_fmt(r['train_seconds'], 2):>8}"
        )
    _emit(args, "" if args.json else "\n".join(lines), {"versions": rows})


def _where_flag(args: argparse.Namespace, default: bool | None) -> bool | None:
    """Ray or not, from --ray / --local, else the command's default (None: if RAY_ADDRESS is set)."""
    if getattr(args, "ray", False):
        return True
    if getattr(args, "local", False):
        return False
    return default


def cmd_sweep(args: argparse.Namespace) -> None:
    from data.storage import Store
    from trainer.evaluate import headline
    from trainer.executor import make_executor
    from trainer.sweep import SweepSpec, run_sweep, summarize

    if not args.config and not args.resume:
        raise UserError("sweep: give --config SWEEP.yaml, or --resume SWEEP_ID")
    spec = None
    if args.config:
        from data.parquet import read_bytes

        spec = SweepSpec.parse(read_bytes(args.config).decode(errors="replace"), args.config)
    store = Store.open(args.store)
    executor = make_executor(ray=_where_flag(args, True))
    r = run_sweep(store, executor, spec, resume=args.resume, progress=not args.json and not args.quiet)
    done = f"{r.finished} of {r.trials} trials finished on {executor.where}"
    lines = [f"sweep {r.sweep_id}: {done}; results in {r.folder}"]
    first = headline(store.schema.task)[0]
    for row in summarize(r.table.to_pylist(), store.schema.task) if r.finished else []:
        mean, std = row[f"holdout_{first}"]
        value = "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"
        lines.append(f"  {row['strategy']:13} {row['params']:40} holdout {first} {value}")
    for trial_id, failure in r.failures:
        print(f"ctrain: warning: trial {trial_id} failed: {failure.message}", file=sys.stderr)
    _emit(
        args,
        "" if args.json else "\n".join(lines),
        {
            "sweep": r.sweep_id,
            "folder": r.folder,
            "trials": r.trials,
            "finished": r.finished,
            "failed": len(r.failures),
            "executor": executor.where,
        },
    )


def cmd_stream(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from trainer.executor import make_executor
    from trainer.stream import DEFAULT_CANDIDATES, Policy, run_stream

    candidates = [c for c in (args.candidates or ",".join(DEFAULT_CANDIDATES)).split(",") if c]
    policy = Policy(args.policy, candidates, seed=args.seed, values=_settings(args.set))
    executor = make_executor(ray=_where_flag(args, True if args.policy == "best" else None))
    if not args.json:
        print(f"stream: {args.inbox} -> {args.store}, policy {args.policy}, on {executor.where}", flush=True)
    events = run_stream(
        args.store,
        args.inbox,
        policy,
        executor,
        once=args.once,
        interval=args.interval,
        on_event=None if args.json else lambda e: print(e.line(), flush=True),
    )
    if events and all(e.status in ("rejected", "failed") for e in events):
        raise UserError(f"none of the {len(events)} new file(s) was learned; first: {events[0].line()}")
    _emit(args, "", {"events": [asdict(e) for e in events], "executor": executor.where})


def cmd_demo(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    import strategies
    from trainer.demo import render_table, run_demo
    from trainer.executor import make_executor

    executor = make_executor(ray=_where_flag(args, None))
    bar = tqdm(
        total=len(strategies.names()),
        desc="strategies",
        unit="strategy",
        disable=args.json or args.quiet or None,
        file=sys.stderr,
    )

    def step(row: dict[str, Any]) -> None:
        bar.set_postfix_str(f"{row['strategy']}: acc {row['test_accuracy']:.3f}")
        bar.update()

    store, results, report = run_demo(executor, args.store, seed=args.seed, on_result=step)
    bar.close()
    text = (
        f"{render_table(results)}\nran on: {executor.where}\nstore: {store}\nreport: {report}\n"
        f"next: ctrain sweep --store {store} --config examples/sweep.yaml"
    )
    _emit(
        args,
        "" if args.json else text,
        {"store": store, "report": report, "results": results, "executor": executor.where},
    )


def build_parser() -> argparse.ArgumentParser:
    from trainer import __version__

    p = _Parser(prog="ctrain", description="Update trained networks as new labelled data arrives.")
    p.add_argument("--version", action="version", version=f"ctrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, func: Any, help_text: str, needs_tf: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text)
        c.add_argument("--json", action="store_true", help="print one JSON object on the last line")
        c.add_argument("--quiet", action="store_true", help="no progress bars")
        c.set_defaults(func=func, needs_tf=needs_tf)
        return c

    def where(c: argparse.ArgumentParser, default: str) -> None:
        group = c.add_mutually_exclusive_group()
        ray_help = f"run on Ray: RAY_ADDRESS's cluster, else a local one (default: {default})"
        group.add_argument("--ray", action="store_true", help=ray_help)
        group.add_argument("--local", action="store_true", help="run in this process, one job after another")

    c = command("demo", cmd_demo, "the reference experiment end to end (in this process unless RAY_ADDRESS or --ray)")
    c.add_argument("--store", help="store folder or URI (default: a new temporary folder)")
    c.add_argument("--seed", type=_checked(SEED), default=0, help="fixes initialisation, sampling, shuffling")
    where(c, "this process, or Ray when RAY_ADDRESS is set")

    c = command("sweep", cmd_sweep, "strategies x parameters x seeds on Ray Tune (--local: in this process)")
    c.add_argument("--store", required=True)
    c.add_argument("--config", help="sweep YAML (see examples/sweep.yaml)")
    c.add_argument("--resume", metavar="SWEEP_ID", help="finish an interrupted sweep without redoing finished trials")
    where(c, "Ray")

    c = command("stream", cmd_stream, "ingest and update on every new Parquet file in an inbox")
    c.add_argument("--store", required=True)
    c.add_argument("--inbox", required=True, help="folder or URI watched for *.parquet")
    c.add_argument(
        "--policy",
        default="best",
        help="a strategy name, or best (default): train --candidates in "
        "parallel and promote the winner if it beats the current model",
    )
    c.add_argument("--candidates", help="comma-separated strategies for --policy best")
    c.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a parameter for every strategy that has it (repeatable)"
    )
    c.add_argument("--once", action="store_true", help="process what is in the inbox now, then exit")
    c.add_argument(
        "--interval", type=_checked(Interval(float, 0, low_open=True)), default=5.0, help="seconds between polls"
    )
    c.add_argument("--seed", type=_checked(SEED), default=0, help="fixes initialisation, sampling, shuffling")
    where(c, "Ray for --policy best, else this process")

    c = command("init", cmd_init, "create a store from a first batch and train its first model")
    c.add_argument("--store", required=True)
    c.add_argument("--data", required=True, help="Parquet file of the first batch")
    c.add_argument("--label", required=True, help="the label column")
    c.add_argument(
        "--model",
        default="mlp:20,10",
        help="mlp:UNITS,... (default mlp:20,10), a builder package.module:function, or a trained FILE.keras "
        "to import as the first version",
    )
    c.add_argument("--train", action="store_true", help="with --model FILE.keras: train it on the batch first")
    c.add_argument(
        "--shape",
        action="append",
        type=_shape,
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
        "--holdout", type=_checked(HOLDOUT), default=0.2, help="fraction of each batch held out for evaluation"
    )
    c.add_argument("--seed", type=_checked(SEED), default=0, help="fixes initialisation, sampling, shuffling")

    c = command("ingest", cmd_ingest, "validate and add new batches", needs_tf=False)
    c.add_argument("--store", required=True)
    c.add_argument("--new-classes", action="store_true", help="accept labels the store has not seen")
    c.add_argument("files", nargs="+", metavar="PARQUET")

    c = command("update", cmd_update, "run one strategy on the batches that arrived since the current model")
    c.add_argument("--store", required=True)
    c.add_argument("--strategy", required=True)
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="a strategy parameter (repeatable)")
    c.add_argument("--promote", choices=("auto", "always", "never"), default="auto")
    c.add_argument("--seed", type=_checked(SEED), default=0, help="fixes initialisation, sampling, shuffling")
    c.add_argument(
        "--actors",
        type=_checked(Interval(int, 0)),
        default=0,
        help="train data-parallel on N Ray actors, as the strategy declares (model averaging or bagging)",
    )
    c.add_argument(
        "--sync-steps",
        type=_checked(Interval(int, 1)),
        default=100,
        help="with --actors and model averaging: every K steps",
    )

    c = command("predict", cmd_predict, "write predictions of a stored version")
    c.add_argument("--store", required=True)
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--version", help="a stored version (default: the current one)")
    c.add_argument(
        "--actors",
        type=_checked(Interval(int, 0)),
        default=0,
        help="score on N Ray actors, each reading its row groups",
    )

    c = command("history", cmd_history, "versions, lineage and metrics", needs_tf=False)
    c.add_argument("--store", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (0, 1 when work failed, 2 for a user's mistake)."""
    from trainer.executor import WorkFailed

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="ctrain: %(levelname)s: %(message)s")
    try:
        if args.needs_tf:
            _import_tensorflow_quietly()
        args.func(args)
    except UserError as exc:
        return _fail(args, str(exc), EXIT_USER_ERROR)
    except WorkFailed as exc:
        return _fail(args, str(exc), EXIT_WORK_FAILED)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", EXIT_INTERRUPTED)
    except Terminated as exc:
        return _fail(args, "terminated", 128 + exc.signum)
    return 0


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """One line on stderr; with --json also one JSON object with the error on stdout."""
    print(f"ctrain: error: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps({"error": message, "exit_code": code}), flush=True)
    return code


def run() -> NoReturn:
    """The `ctrain` console script: `main`, then leave without the interpreter's teardown.

    TensorFlow and Arrow keep native threads that may still hold Python objects when
    Python finalizes; dropping one then needs the GIL, which finalization no longer
    hands out, and the process aborts ("terminate called without an active
    exception", exit 134) after it has already printed its result. Everything a
    command writes is flushed (and store files fsynced) before it returns, so leaving
    with `os._exit` loses nothing; a local Ray this process started is shut down first.
    """
    # Both stop every command, also when started in the background by a shell, which starts
    # it with SIGINT ignored: the heavy work returns to Python often (see trainer.loop).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)  # the terminal went away: stop as cleanly as for SIGTERM
    try:
        code = main()
    except SystemExit as exc:  # --help, --version and argparse's own errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USER_ERROR)
    except BaseException:
        traceback.print_exc()
        code = EXIT_WORK_FAILED
    _leave(code)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def _leave(code: int) -> NoReturn:
    if "ray" in sys.modules:
        from cluster.runtime import disconnect

        with contextlib.suppress(Exception):
            disconnect()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
