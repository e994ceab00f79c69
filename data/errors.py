"""The one exception type for mistakes a user can make."""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = [
    "NewClassesRefused",
    "TerminalFormatter",
    "UserError",
    "WorkFailed",
    "terminal_safe",
]


class UserError(Exception):
    """Bad input from the user: a file, an argument or a store they pointed us at.

    The CLI prints its message as one line and exits with code 2; nothing else about it is
    special, so library callers can catch it like any exception. A mistake in one argument
    (`UserError.about`) is worded with the Python API's name for it (`promote_on='x': ...`);
    the CLI names the flag instead (`--promote-on x: ...`).

    Attributes:
        option: the API's name of the argument the message is about, or None.
        value: what was given for it (None: the message is about the argument as a whole).
        problem: what is wrong, after the argument.
        group: for a key of a mapping argument (`params`: a strategy's parameters, given as
            keywords in Python and with `--set` on the command line; `trigger_params`), its name.
    """

    option: str | None = None
    value: Any = None
    problem: str = ""
    group: str | None = None

    @classmethod
    def about(cls, option: str, value: Any, problem: str, *, group: str | None = None) -> UserError:
        """A mistake in one argument: `option=value: problem` (`option: problem` without a value)."""
        err = cls(f"{option}: {problem}" if value is None else f"{option}={value!r}: {problem}")
        err.option, err.value, err.problem, err.group = option, value, problem, group
        return err


class NewClassesRefused(UserError):
    """A batch holds labels the store does not know, and the user did not accept new classes."""


# Characters that move a terminal's cursor, change its colours or reorder text: C0 and C1
# controls, DEL, the Unicode line and paragraph separators and bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str, *, lines: bool = False) -> str:
    """`text` fit to print on a terminal: every control character written as its escape (`\\x1b`,
    `\\n`), so a file name, a column name or a reason a user gave never reaches the terminal raw.
    With `lines`, line breaks are kept (a table of several lines) and only the rest is escaped."""
    if lines:
        return "\n".join(terminal_safe(line) for line in text.split("\n"))
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TerminalFormatter(logging.Formatter):
    """Log lines meant for a terminal, every control character escaped (`terminal_safe`)."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record))


class WorkFailed(Exception):
    """Work failed for a reason other than the user's input; the CLI exits with code 1."""
