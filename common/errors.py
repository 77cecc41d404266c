"""Errors of the core, split by cause.

Every error carries a stable ``code`` (for machines and tests), an English
``message`` for engineers and logs, and ``message_ja`` for municipal staff.
"""

from __future__ import annotations


class RenkeiError(Exception):
    """Base of the errors this project raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, message_ja: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.message_ja = message_ja or message
        if code is not None:
            self.code = code


class NoticeFileError(RenkeiError, ValueError):
    """The file as a whole cannot be read as a notice file (header, encoding, truncation).

    ``line`` is 1-based when known; ``offset`` is the byte offset in the file.
    """

    code = "file"

    def __init__(
        self,
        message: str,
        *,
        message_ja: str,
        code: str,
        name: str = "<stream>",
        line: int | None = None,
        offset: int | None = None,
    ):
        where = name + (f":{line}" if line is not None else "")
        if offset is not None:
            where += f" (byte {offset})"
        super().__init__(f"{where}: {message}", message_ja=message_ja, code=code)
        self.name = name
        self.line = line
        self.offset = offset


class NoticeWriteError(RenkeiError, ValueError):
    """A record cannot be written (a character without a Juki code, a line break in a value)."""

    code = "write"
