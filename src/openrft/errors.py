"""Errors a user can act on.

Every error caused by user input (a config key, a data row, a reward function) is a
`UserError`: the CLI prints its one-line message and exits with code 2, without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error in something the user gave us; `str(err)` is one line saying what to fix."""

    exit_code = 2


class NotFound(UserError):
    """A referenced resource does not exist (the server answers 404)."""


class Conflict(UserError):
    """The resource is in use (the server answers 409)."""


class ConfigError(UserError):
    """A config file or override is invalid."""


class DataError(UserError):
    """A dataset file or row is invalid. The message names the file, line and column."""

    def __init__(
        self,
        message: str,
        *,
        file: object = None,
        line: int | None = None,
        column: str | int | None = None,
        hint: str | None = None,
    ) -> None:
        self.file, self.line, self.column, self.hint = file, line, column, hint
        where = str(file) if file else "<data>"
        if line is not None:
            where += f":{line}"
        if column is not None:
            where += f": column {column!r}" if isinstance(column, str) else f":{column}"
        text = f"{where}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class RewardError(UserError):
    """A reward function cannot be loaded, or failed too often during a run."""
