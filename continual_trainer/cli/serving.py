"""Predictions: a file scored, a version exported, the current version served over HTTP."""

from __future__ import annotations

import argparse
import sys

from continual_trainer.cli.options import (
    Commands,
    checked,
    command,
    size,
    store_option,
    where_flag,
    where_options,
    written,
)
from continual_trainer.cli.output import emit
from continual_trainer.data.errors import UserError
from continual_trainer.trainer.params import Interval


def cmd_predict(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    store = ct.open_store(args.store)
    r = store.predict_file(
        args.data,
        args.out,
        version=args.version,
        actors=args.actors,
        ray=where_flag(args),
        executor=args.executor,
        prediction_column=args.prediction_column,
    )
    text = f"wrote {r['rows']} predictions of version {r['version']} to {r['out']} (scored in {r['executor']})"
    emit(args, "" if args.json else text, r)


def cmd_serve(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    token = None
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError.about("token-file", args.token_file, f"cannot be read ({exc.__class__.__name__})") from None
        if not token:
            raise UserError.about("token-file", args.token_file, "is empty")
    store = ct.open_store(args.store)
    url = f"http://{args.host}:{args.port}"

    def ready(version: str) -> None:  # the JSON object is the last line: nothing follows it but the stop
        text = f"serving version {version} of {store.display} on {url} (POST /predict; Ctrl-C stops)"
        emit(args, "" if args.json else text, {"url": url, "version": version, "store": store.display})
        sys.stdout.flush()

    store.serve(
        on_ready=ready,
        console=not args.json,
        host=args.host,
        port=args.port,
        poll=args.poll,
        max_body=args.max_body,
        token=token,
        log_sample=args.log_sample,
        id_column=args.id_column,
        shadow=args.shadow,
        workers=args.workers,
        batch_rows=args.batch_rows,
        batch_wait=args.batch_wait_us / 1e6,
        ray=_serve_on_ray(args),
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        replica_cpus=args.replica_cpus,
    )


def _serve_on_ray(args: argparse.Namespace) -> bool | None:
    """`serve` runs here or on Ray Serve: --executor may name only those two."""
    if args.executor not in (None, "local", "ray"):
        raise UserError.about("executor", args.executor, "serve runs here (local) or on Ray Serve (ray)")
    if args.executor is not None:
        return args.executor == "ray"
    return where_flag(args)


def cmd_export(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    r = ct.open_store(args.store).export(args.out, version=args.version, format=args.format)
    emit(args, "" if args.json else f"exported version {r['version']} as {r['format']} to {r['out']}", r)


def add(sub: Commands) -> None:
    """Declare predict, serve, export."""
    c = command(sub, "predict", cmd_predict, "write predictions of a stored version", needs_tf=False)
    store_option(c)
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True, type=written, help="the Parquet file to write")
    c.add_argument(
        "--prediction-column",
        default="prediction",
        metavar="NAME",
        help="the column predictions go to (default prediction; the probability goes to NAME_probability)",
    )
    c.add_argument(
        "--version", default="current", help="a version: an id, current (default), parent, or a unique prefix or suffix"
    )
    c.add_argument(
        "--actors",
        type=checked(Interval(int, 0)),
        default=0,
        help="score on N Ray actors, each reading its row groups",
    )
    where_options(c)

    _add_serve(sub)

    c = command(sub, "export", cmd_export, "write a version as one Keras model or a TensorFlow SavedModel")
    store_option(c)
    c.add_argument(
        "--out", required=True, type=written, help="FILE.keras, or a folder for a SavedModel (written as FOLDER/<n>/)"
    )
    c.add_argument("--version", default="current", help="an id, current (default), parent, or a unique prefix")
    c.add_argument("--format", choices=("keras", "saved_model"), help="default: keras for *.keras, else saved_model")


def _add_serve(sub: Commands) -> None:
    c = command(sub, "serve", cmd_serve, "answer predictions over HTTP, reloading on promotion", needs_tf=False)
    store_option(c)
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    c.add_argument("--port", type=checked(Interval(int, 1, 65535)), default=8000)
    c.add_argument(
        "--poll", type=checked(Interval(float, 0.1)), default=2.0, help="seconds between looks for a promoted version"
    )
    c.add_argument(
        "--workers",
        type=checked(Interval(int, 1, 64)),
        help="server processes sharing the port (default: one per core)",
    )
    c.add_argument(
        "--batch-rows",
        type=checked(Interval(int, 1, 100_000)),
        default=64,
        help="most rows scored in one model call when requests arrive together (1: no batching; default 64)",
    )
    c.add_argument(
        "--batch-wait-us",
        type=checked(Interval(int, 0, 1_000_000)),
        default=0,
        help="microseconds a request waits for others to batch with (default 0: only those already waiting)",
    )
    c.add_argument("--max-body", type=size, default=64 * 2**20, help="largest request body, e.g. 64MiB")
    c.add_argument("--token-file", help="a file holding a token requests must bear (Authorization: Bearer ...)")
    c.add_argument(
        "--log-sample",
        type=checked(Interval(float, 0.0, 1.0)),
        default=1.0,
        help="fraction of answered rows kept in the store's prediction log (default 1; 0 keeps none)",
    )
    c.add_argument("--id-column", help="a column whose values key the rows in the log (default: request id + row)")
    c.add_argument("--shadow", help="a version that scores every request too, logged but never answering")
    where_options(c)
    c.add_argument(
        "--replicas",
        type=checked(Interval(int, 1)),
        default=1,
        help="on Ray: replicas (the least, with --max-replicas)",
    )
    c.add_argument(
        "--max-replicas", type=checked(Interval(int, 1)), help="on Ray: autoscale between --replicas and this many"
    )
    c.add_argument(
        "--replica-cpus",
        type=checked(Interval(float, 0.0, low_open=True)),
        default=1.0,
        help="on Ray: CPUs per replica",
    )
