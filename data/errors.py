"""The one exception type for mistakes a user can make."""


class UserError(Exception):
    """Bad input from the user: a file, an option or a store they pointed us at.

    The CLI prints its message as one line and exits with code 2; nothing else
    about it is special, so library callers can catch it like any exception.
    """


class NewClassesRefused(UserError):
    """A batch holds labels the store does not know, and the user did not accept new classes."""
