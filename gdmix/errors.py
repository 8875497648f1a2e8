"""Errors a user can act on.

Every error raised because of bad input or bad configuration is a :class:`GdmixError`; the CLI
prints its message (no traceback) and exits non-zero. :class:`DataError` carries the file, column
and row where the problem was found, because "NaN in the data" is useless on a 10 GB dataset.
"""

from __future__ import annotations


class GdmixError(Exception):
    """A problem with the user's input or configuration (not a bug in gdmix)."""


class ConfigError(GdmixError):
    """The configuration is invalid; the message names the offending key path."""


class DataError(GdmixError):
    """The data breaks the data contract; the message names file, column and row where known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.path = path
        self.column = column
        self.row = row
        self.detail = message
        where = []
        if path is not None:
            where.append(f"file {path}")
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)

    def shifted(self, rows: int) -> "DataError":
        """The same error with its row number moved by ``rows`` (a piece read from mid-file)."""
        row = None if self.row is None else self.row + rows
        return DataError(self.detail, path=self.path, column=self.column, row=row)


class DatasetUnavailable(GdmixError):
    """A public dataset could not be fetched because the network could not be reached (and
    only then: a corrupt download or a bad local copy is a :class:`GdmixError` or
    :class:`DataError`). ``gdmix demo`` falls back to synthetic data on this error alone."""
