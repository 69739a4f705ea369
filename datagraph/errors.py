"""The exceptions datagraph raises on purpose, each carrying a `ProblemCode` and a user-facing message.

    DatagraphError                  base; never raised itself
    ├── BadInput                    BAD_INPUT: a column, operator, value or limit the user got wrong
    ├── NotFound                    NOT_FOUND: no dataset / export with that id
    ├── TooLarge                    TOO_LARGE: over a size, row or column limit
    ├── UnsupportedFormat           UNSUPPORTED_FORMAT: not a CSV, XLSX or XLS (by content)
    ├── Timeout                     TIMEOUT: past the analysis deadline
    ├── Cancelled                   CANCELLED: a job stopped because nobody followed it any more
    ├── StorageFull                 STORAGE_FULL: the disk under the data directory is full
    ├── SourceUnavailable           SOURCE_UNAVAILABLE: a database or upstream did not answer
    └── ReadOnly                    READ_ONLY: SQL that would change something, or reach past what a source allows

Messages are written for the person using the API: they name the column, the operator or the
limit, and never carry a path, a traceback or a library's own text. Anything else that escapes a
resolver is unexpected: it is logged in full and the client sees a generic INTERNAL problem.
"""

from __future__ import annotations

__all__ = [
    "BadInput",
    "Cancelled",
    "DatagraphError",
    "NotFound",
    "ReadOnly",
    "SourceUnavailable",
    "StorageFull",
    "Timeout",
    "TooLarge",
    "UnsupportedFormat",
]


class DatagraphError(Exception):
    """An expected failure: becomes a `Problem` with `code` and `message` in the payload."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(DatagraphError):
    code = "BAD_INPUT"


class NotFound(DatagraphError):
    code = "NOT_FOUND"


class TooLarge(DatagraphError):
    code = "TOO_LARGE"


class UnsupportedFormat(DatagraphError):
    code = "UNSUPPORTED_FORMAT"


class Timeout(DatagraphError):
    code = "TIMEOUT"


class Cancelled(DatagraphError):
    code = "CANCELLED"


class StorageFull(DatagraphError):
    code = "STORAGE_FULL"


class SourceUnavailable(DatagraphError):
    code = "SOURCE_UNAVAILABLE"


class ReadOnly(DatagraphError):
    code = "READ_ONLY"
