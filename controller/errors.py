"""Errors the controller reports to users.

Boundary: every error a user can cause is a ``BpfnetError`` carrying an HTTP
status; the API turns it into ``{"error": message}`` and the CLI prints the
message on one line. Anything else is a bug and is logged with its traceback.
"""

from __future__ import annotations


class BpfnetError(Exception):
    """A user-facing error with a clear message."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(BpfnetError):
    status = 400


class NotFound(BpfnetError):
    status = 404


class Conflict(BpfnetError):
    status = 409


class Exhausted(BpfnetError):
    status = 507
