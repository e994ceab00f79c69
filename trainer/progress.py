"""Feedback on long work, on stderr: a progress bar on a terminal, else a status line now and then.

A command opens one `Reporter` for its run (`with reporting(Reporter("update"))`); the
code doing the work reports to whichever reporter is open, if any: the training loop
its epochs, sweeps their trials, the demo its strategies. Without an open reporter
(the Python API, tests, Ray workers) reporting costs nothing and prints nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import IO, Any, Protocol

_OPEN: ContextVar[Reporter | None] = ContextVar("ctrain_reporter", default=None)
# Set to stop work running on other threads of this process (jobs run side by side, see
# `executor.LocalExecutor`): long work reports progress every half second or so, and a report
# is where it notices the request and stops with `Stopped`.
STOP = threading.Event()


class Stopped(Exception):
    """Work stopped because its command was interrupted (see `STOP`)."""


class Milestones(Protocol):
    """Told the epochs a training run has finished, with the model as it stands then (a sweep's
    trial scores it and asks its scheduler whether to go on; see `continual_trainer.schedule`).

    `until_next()` is how many more epochs to run before telling again (the training loop ends
    its compiled chunks there); `ran(epochs, model)` is called after every chunk and may raise to
    stop the training (the exception reaches whoever opened the milestones)."""

    def until_next(self) -> int: ...

    def ran(self, epochs: int, model: Any) -> None: ...


_MILESTONES: ContextVar[Milestones | None] = ContextVar("ctrain_milestones", default=None)


@contextlib.contextmanager
def watching(milestones: Milestones | None) -> Iterator[Milestones | None]:
    """Tell `milestones` of every epoch the training loop runs in this context (this thread)."""
    token = _MILESTONES.set(milestones)
    try:
        yield milestones
    finally:
        _MILESTONES.reset(token)


def milestones() -> Milestones | None:
    """The milestones the training loop tells of its epochs, if any are open here."""
    return _MILESTONES.get()


_TRAININGS: ContextVar[list[dict[str, Any]] | None] = ContextVar("ctrain_trainings", default=None)


@contextlib.contextmanager
def recording_training() -> Iterator[list[dict[str, Any]]]:
    """How each training run in this context (this thread) ended, in order: the epochs it ran,
    why it stopped early (`patience`, `budget`, or None) and, with early stopping, the epoch
    whose weights the network kept (0: none beat the weights it started from)."""
    runs: list[dict[str, Any]] = []
    token = _TRAININGS.set(runs)
    try:
        yield runs
    finally:
        _TRAININGS.reset(token)


def trained(epochs: int, stopped: str | None, best_epoch: int | None) -> None:
    """Called by the training loop when a run ends; recorded if `recording_training` is open."""
    runs = _TRAININGS.get()
    if runs is not None:
        runs.append({"epochs": epochs, "stopped": stopped, "best_epoch": best_epoch})


STATUS_SECONDS = 10.0  # between status lines when stderr is not a terminal (CTRAIN_STATUS_SECONDS)


class Reporter:
    """Counts of one kind of work at a time (`epochs`, `trials`, ...), with a note such as the
    best result so far.

    Args:
        command: names the command in status lines.
        stream: where to write (stderr).
        tty: a bar (True) or status lines (False); default: whether `stream` is a terminal.
        interval: seconds between status lines (default CTRAIN_STATUS_SECONDS, else 10).
    """

    def __init__(
        self, command: str, *, stream: IO[str] | None = None, tty: bool | None = None, interval: float | None = None
    ) -> None:
        self._command = command
        self._stream = stream or sys.stderr
        self._tty = _isatty(self._stream) if tty is None else tty
        self._interval = (
            float(os.environ.get("CTRAIN_STATUS_SECONDS", STATUS_SECONDS)) if interval is None else interval
        )
        self._start = self._last = time.monotonic()
        self._bar: Any = None
        self._phase_shown = False
        self._what, self._done, self._total, self._note = "", 0, 0, ""

    def count(self, what: str, done: int, total: int, note: str | None = None) -> None:
        """`done` of `total` `what` (e.g. 40 of 150 epochs); a new count when `what` changes or
        `done` goes back (the next model's training). Under `labelled(name)`, `what` is named
        after it (`finetune_all: epochs`)."""
        label = _LABEL.get()
        what = f"{label}: {what}" if label else what
        if what != self._what or done < self._done or total != self._total:
            self._close_bar()
            self._what, self._total = what, total
        self._done = done
        if note is not None:
            self._note = note
        if self._tty:
            self._draw()
        elif time.monotonic() - self._last >= self._interval:
            self._last = time.monotonic()
            note = f"; {self._note}" if self._note else ""
            elapsed = time.monotonic() - self._start
            print(
                f"ctrain: {self._command}: {what} {done}/{total}{note} ({elapsed:.0f} s)", file=self._stream, flush=True
            )

    def _draw(self) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=self._total, desc=self._what, file=self._stream, leave=False, dynamic_ncols=True)
        self._bar.n = self._done
        if self._note:
            self._bar.set_postfix_str(self._note, refresh=False)
        self._bar.refresh()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._phase_shown:  # the phase line goes: the next line starts clean
            self._stream.write("\r\x1b[2K")
            self._stream.flush()
            self._phase_shown = False

    def phase(self, text: str) -> None:
        """What the command is doing now (`starting TensorFlow`, `reading 4 batches`): on a
        terminal one line, replaced by the next phase, bar or output; elsewhere nothing (status
        lines there count work, and scripts reading stderr get only what they must)."""
        if not self._tty:
            return
        self._close_bar()
        elapsed = time.monotonic() - self._start
        self._stream.write(f"\r\x1b[2Kctrain: {self._command}: {text} … ({elapsed:.0f} s)")
        self._stream.flush()
        self._phase_shown = True

    def say(self, line: str) -> None:
        """A line for the user (e.g. the plan before training), on its own line."""
        self._close_bar()
        print(f"ctrain: {self._command}: {line}", file=self._stream, flush=True)

    def close(self) -> None:
        self._close_bar()


def _isatty(stream: IO[str]) -> bool:
    """A terminal a bar can be drawn on (a pseudo-terminal without a size draws nothing)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):
        return False


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[Reporter | None]:
    """Make `reporter` the one work reports to, for the duration (None: report nowhere)."""
    token = _OPEN.set(reporter)
    try:
        yield reporter
    finally:
        _OPEN.reset(token)
        if reporter is not None:
            reporter.close()


_LABEL: ContextVar[str] = ContextVar("ctrain_progress_label", default="")


@contextlib.contextmanager
def labelled(name: str) -> Iterator[None]:
    """Name the counts reported in this context (this thread) after `name`, e.g. the strategy
    being trained, so that a bar says whose epochs it counts."""
    token = _LABEL.set(name)
    try:
        yield
    finally:
        _LABEL.reset(token)


def phase(text: str) -> None:
    """Tell the user what the command is doing now, on the open reporter (see `Reporter.phase`)."""
    reporter = _OPEN.get()
    if reporter is not None:
        reporter.phase(text)


def clear() -> None:
    """Take any bar or phase line off the terminal (before a command prints its result)."""
    reporter = _OPEN.get()
    if reporter is not None:
        reporter._close_bar()


def say(line: str) -> None:
    """Tell the user `line` on the open reporter, if there is one (a command run from the CLI)."""
    reporter = _OPEN.get()
    if reporter is not None:
        reporter.say(line)


def report(what: str, done: int, total: int, note: str | None = None) -> None:
    """Count `done` of `total` `what` on the open reporter, if there is one; raise `Stopped`
    if work was asked to stop."""
    if STOP.is_set():
        raise Stopped("stopped: the command was interrupted")
    reporter = _OPEN.get()
    if reporter is not None:
        reporter.count(what, done, total, note)


def start_tensorflow() -> None:
    """Import TensorFlow and Keras (once) under a progress line: a command that trains calls
    this when its inputs are known to be right, so a mistake is said without the import's wait."""
    if "keras" not in sys.modules:
        phase("starting TensorFlow")
        import_keras_quietly()


def import_keras_quietly() -> None:
    """Import TensorFlow and Keras (once) with file descriptor 2 pointed at /dev/null.

    TensorFlow's C++ runtime prints start-up notices (oneDNN, absl) straight to fd 2,
    whatever TF_CPP_MIN_LOG_LEVEL says; users would see them above every message, and
    scripts reading stderr would get more than one line. Commands that train import it
    first; those that may score without it (`trainer.light`) when they first load a model.
    Keras's scikit-learn wrappers (`keras.wrappers.SKLearnClassifier`) and its image-gallery
    plot are left without scikit-learn and matplotlib in a process where this imported Keras
    first (both stay importable for this project's own use afterwards).
    """
    if "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    # Keras imports scikit-learn (about 1.7 s here) for its scikit-learn wrappers and
    # matplotlib's pyplot (0.4 s) for a plotting helper, which this tool never uses, and does
    # without them when they are missing: they are hidden for that import.
    hide = [name for name in ("sklearn", "matplotlib") if name not in sys.modules]
    try:
        os.dup2(devnull, 2)
        for name in hide:
            sys.modules[name] = None  # type: ignore[assignment]  # None: `import sklearn` raises ImportError
        try:
            import keras  # noqa: F401
        finally:
            for name in hide:
                del sys.modules[name]
        import tensorflow

        # The devices start here too: a TensorFlow built with CUDA logs its failed cuInit on a
        # machine without a GPU the first time they are listed.
        tensorflow.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
