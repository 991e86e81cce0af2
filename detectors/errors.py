"""The one error type for user mistakes (bad file, bad key, bad value).

The CLI prints it as one line and exits with status 2; any other exception is a bug and keeps
its traceback. Messages should say what is wrong and where (file, line, key).
"""

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in what the user gave us (input files, options, configs)."""
