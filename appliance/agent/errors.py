"""Errors the agent raises on purpose, split by cause.

Each carries a stable ``code`` (for machines, tests, ``--json`` output and the
CLI's exit codes), an English ``message`` for logs and technicians that says
what to do next, and ``message_ja`` for municipal staff where they see it.
The transport's own errors (``TransportError``) live with the transport.
"""

from __future__ import annotations

__all__ = ["AgentError", "BusyError", "ConfigError", "FolderError", "QueueError"]


class AgentError(Exception):
    """Base of the agent's own errors."""

    code = "agent.error"

    def __init__(self, message: str, *, code: str | None = None, message_ja: str | None = None):
        super().__init__(message)
        self.message = message
        self.message_ja = message_ja or message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "message_ja": self.message_ja}


class ConfigError(AgentError, ValueError):
    """The configuration file is missing, unreadable or has a bad value.

    ``key`` names the setting (``"retry.base"`` for a key in a table), or is
    None when the file as a whole is at fault; the message always starts with
    the file's path and the key.
    """

    code = "config.invalid"

    def __init__(self, message: str, *, key: str | None = None, code: str | None = None):
        super().__init__(message, code=code)
        self.key = key


class QueueError(AgentError):
    """The local queue refused an operation.

    Codes: ``queue.transition`` (a state change the state machine does not
    allow), ``queue.not_found`` (no such row), ``queue.schema`` (the database
    was written by a newer agent), ``queue.value`` (a bad field value).
    """

    code = "queue.error"


class BusyError(AgentError):
    """Another agent process holds the queue lock (``agent.busy``): wait for it to finish."""

    code = "agent.busy"


class FolderError(AgentError):
    """A folder operation could not be done safely (``folder.cross_device``, ``folder.name``, …)."""

    code = "folder.error"
