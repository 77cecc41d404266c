"""Errors the server raises on purpose, split by cause.

Each carries a stable ``code`` (for machines, tests and the HTTP layer's
responses) and a ``message`` that says what happened and, where it can, what
to do next.  The HTTP layer maps the classes to status codes; the CLI maps
them to exit codes.
"""

from __future__ import annotations


class ServerError(Exception):
    """Base of the server's own errors."""

    code = "server.error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ConfigError(ServerError, ValueError):
    """A configuration file, environment variable or override is wrong; the message names the key."""

    code = "config.invalid"


class EnrollmentError(ServerError):
    """An enrollment was refused: ``token.invalid``, ``token.used``, ``token.expired``,
    ``key.invalid`` or ``key.duplicate``."""

    code = "enrollment.refused"


class NotFoundError(ServerError):
    """No such municipality, terminal, batch or upload (for the caller)."""

    code = "not_found"


class AckError(ServerError):
    """A batch acknowledgement was refused (``ack.hash_mismatch``)."""

    code = "ack.refused"


class UploadError(ServerError):
    """An upload could not be processed at all (as opposed to a file the receipt rejects)."""

    code = "upload.refused"


class NoticeImportError(ServerError):
    """An import could not run (no municipality master loaded, a conflicting concurrent import)."""

    code = "import.refused"


class CloseDayError(ServerError):
    """A close-day run was refused (a later day is already closed, no master loaded)."""

    code = "closeday.refused"
