"""The program: the parser assembled from the rooms, one command run, and how it ends.

Every room (`cli/<use case>.py`) declares its commands, their options and their output; this
module turns what a command raises into one line and an exit code: 2 for a user's mistake
(`UserError`, a bad flag), 1 for work that failed (`WorkFailed`, a damaged store, anything
unexpected), 128 + N for a signal, never a traceback (unless CTRAIN_DEBUG=1).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from continual_trainer.cli import demo, labels, records, serving, store, streams, sweeps, updates
from continual_trainer.cli.options import EXIT_INTERRUPTED, EXIT_USER_ERROR, EXIT_WORK_FAILED, Parser
from continual_trainer.cli.store import StoreDamaged
from continual_trainer.data.errors import TerminalFormatter, UserError, terminal_safe

_STANDALONE = False  # True when `main` runs as the `ctrain` process (`run`), not for a caller that keeps its Ray

# The rooms, in the order `ctrain --help` lists their commands: a store's life first.
ROOMS = (store, updates, sweeps, streams, serving, labels, records, demo)


def build_parser() -> argparse.ArgumentParser:
    from continual_trainer import __version__

    p = Parser(prog="ctrain", description="Update trained networks as new labelled data arrives.")
    p.add_argument("--version", action="version", version=f"ctrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for room in ROOMS:
        room.add(sub)
    return p


class Terminated(Exception):
    """SIGTERM or SIGHUP arrived (raised in the main thread by `ctrain`'s handler)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def quiet_third_parties() -> None:
    """Other libraries' warnings (Keras, NumPy, MLflow) are not the user's to read: shown only with
    CTRAIN_DEBUG=1. The project's own warnings and log lines stay."""
    import warnings

    if os.environ.get("CTRAIN_DEBUG") == "1":
        return
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"continual_trainer(\.|$)")
    for name in ("mlflow", "alembic", "urllib3", "absl", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (0, 1 when work failed, 2 for a user's mistake)."""
    from continual_trainer.data.errors import WorkFailed

    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(TerminalFormatter("ctrain: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    quiet_third_parties()
    from continual_trainer.trainer.progress import Reporter, reporting, start_tensorflow

    address = os.environ.get("RAY_ADDRESS")  # --address names the cluster for this command only
    try:
        with reporting(None if args.quiet else Reporter(args.command)):
            if args.needs_tf:
                start_tensorflow()
            args.func(args)
    except UserError as exc:
        return _fail(args, in_flags(exc), EXIT_USER_ERROR)
    except WorkFailed as exc:
        return _fail(args, str(exc), EXIT_WORK_FAILED)
    except (KeyboardInterrupt, Terminated) as exc:
        return _fail(args, *_stopped_by(exc))  # type: ignore[misc]
    except StoreDamaged as exc:
        return _fail(args, str(exc), EXIT_WORK_FAILED)
    except BrokenPipeError:  # the reader stopped reading (`ctrain history | head`): nothing to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the machine: a full or read-only disk, permissions, too many open files
        code = EXIT_USER_ERROR if exc.errno in _ENVIRONMENT_ERRNOS else EXIT_WORK_FAILED
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return _fail(args, f"{exc.strerror or type(exc).__name__}{where}", code, debug=True)
    except Exception as exc:  # not the user's mistake: one line; the traceback under CTRAIN_DEBUG=1
        stop = _stopped_by(exc)
        if stop is not None:  # a signal raised inside native code (Ray's wait) arrives wrapped
            return _fail(args, *stop)
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        return _fail(args, f"unexpected {type(exc).__name__}: {first[:300]}", EXIT_WORK_FAILED, debug=True)
    finally:
        if address is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = address
    return 0


# The Python API's argument names whose flag is not `--` + the name with dashes.
FLAGS = {
    "shapes": "--shape",
    "combine": "--trigger-combine",
    "params": "--set",
    "trigger_params": "--trigger-set",
    "train_out": "--out-train",
    "holdout_out": "--out-holdout",
}


def flag(option: str) -> str:
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def in_flags(exc: UserError) -> str:
    """A user's mistake as the command line names it: the flag for the API's argument
    (`promote_on='x': ...` is `--promote-on x: ...`; a strategy's parameter `freeze=9: ...`
    is `--set freeze=9: ...`)."""
    if exc.option is None:
        return str(exc)
    if exc.group is not None:
        head = f"{flag(exc.group)} {exc.option}" + ("" if exc.value is None else f"={exc.value}")
    else:
        head = flag(exc.option) + ("" if exc.value is None else f" {exc.value}")
    return f"{head}: {exc.problem}"


def _stopped_by(exc: BaseException) -> tuple[str, int] | None:
    """("interrupted", 130) or ("terminated", 128 + N) if a signal's exception is in `exc`'s chain."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, KeyboardInterrupt):
            return "interrupted", EXIT_INTERRUPTED
        if isinstance(link, Terminated):
            return "terminated", 128 + link.signum
        link = link.__cause__ or link.__context__
    return None


_ENVIRONMENT_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE, errno.EDQUOT}


def _fail(args: argparse.Namespace, message: str, code: int, debug: bool = False) -> int:
    """One line on stderr; with --json also one JSON object with the error on stdout.
    `debug`: with CTRAIN_DEBUG=1 the traceback of the exception being handled comes first."""
    if debug and os.environ.get("CTRAIN_DEBUG") == "1":
        traceback.print_exc()
    if _STANDALONE:  # first: Ray's error listener prints on stdout (an actor killed mid-task), never after the JSON
        _leave_ray()
    # column and file names are the user's: no escapes reach the terminal (JSON carries them as they are)
    print(terminal_safe(f"ctrain: error: {message}"), file=sys.stderr)
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
    global _STANDALONE
    _STANDALONE = True  # this process is the command: it leaves Ray before it prints an error
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


def _leave_ray() -> None:
    """Disconnect from Ray if this process joined it (a local Ray it started stops)."""
    import continual_trainer as ct

    with contextlib.suppress(Exception):
        ct.leave_cluster()


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def _leave(code: int) -> NoReturn:
    _leave_ray()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
