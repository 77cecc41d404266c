"""Structured logs: one JSON object per line, with the request id, and never personal data.

Every line the server's own loggers (``renkei.*``) write is one JSON object::

    {"ts": "2026-11-27T09:00:00.123Z", "level": "info", "event": "http.request",
     "request_id": "5f0c…", "method": "GET", "route": "/api/v1/batches", "status": 200, …}

so the ministry's log collector indexes fields instead of parsing text.

Personal data (residents' names, card numbers, birth dates, addresses) must
never reach a log: logs are copied, kept for years and read by people who
may not see the records.  Three rules keep it out, and a test runs a whole
day through the real server and searches every line for the records' values:

1. Events carry only fields named in :data:`FIELDS` — ids, codes, counts,
   durations — and each value must be a number, a boolean, ``None`` or a
   short string of the characters ids are made of (:data:`_SAFE_TEXT`).  A
   field that breaks the rule is replaced by ``"[dropped]"``; logging never
   raises.
2. Request paths are logged without their query string, and by route
   template (``/api/v1/batches/<batch_id>``) next to the path's ids.
3. An exception is logged as its type and the code locations of its
   traceback, without its message: messages can quote input (a validation
   message quotes the bad value it found).

Lines from other loggers under ``renkei`` (plain ``log.error("…")`` calls)
become ``{"event": "log", "message": …}``; those messages are written by us
and name ids only.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "FIELDS",
    "LOGGER",
    "JsonFormatter",
    "event",
    "new_request_id",
    "request_id_from",
    "setup_logging",
]

#: The logger every server event goes through (and the parent of the modules' loggers).
LOGGER = "renkei"
#: The only fields an event may carry, besides ts, level, event and request_id.
FIELDS = frozenset(
    {
        "method",
        "route",
        "path",
        "status",
        "duration_ms",
        "bytes",
        "terminal_id",
        "operator_id",
        "lasdec",
        "batch_id",
        "upload_id",
        "token_id",
        "code",
        "outcome",
        "count",
        "sent",
        "spooled",
        "failed",
        "business_date",
        "mail_key",
        "worker",
    }
)
#: The logger object itself (getLogger takes a lock on every call; the object never changes).
_LOGGER = logging.getLogger(LOGGER)
#: What a string field may hold: ids, codes, routes, dates, numbers — no spaces, no letters
#: outside ASCII (names in kanji or kana can never pass), at most 200 characters.
_SAFE_TEXT = re.compile(r"[A-Za-z0-9_.:/<>@+=-]{0,200}")
#: A request id taken from a load balancer's X-Request-Id; anything else is replaced.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
DROPPED = "[dropped]"


def new_request_id() -> str:
    return secrets.token_hex(12)


def request_id_from(header: str | None) -> str:
    """The caller's request id when it is a plain token (so the LB's id joins the logs), else new."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return new_request_id()


def _safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, str) and _SAFE_TEXT.fullmatch(value):
        return value
    return DROPPED


def _current_request_id() -> str | None:
    try:
        from flask import g, has_request_context
    except ImportError:  # pragma: no cover - flask is a dependency
        return None
    if has_request_context():
        return g.get("request_id")
    return None


def event(name: str, /, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event; ``None`` fields are left out, fields outside :data:`FIELDS` or with
    unsafe values are replaced by ``"[dropped]"``."""
    logger = _LOGGER
    if not logger.isEnabledFor(level):
        return
    clean = {
        key: (_safe(value) if key in FIELDS else DROPPED)
        for key, value in sorted(fields.items())
        if value is not None
    }
    # makeRecord + handle is what Logger.log does, minus findCaller: walking the stack for a
    # file and line the JSON line never shows cost a fifth of every request's log (issue 10).
    logger.handle(
        logger.makeRecord(
            LOGGER,
            level,
            __file__,
            0,
            name,
            (),
            None,
            "event",
            {"renkei_event": name, "renkei_fields": clean},
        )
    )


def _frames(exc_info: Any) -> list[str]:
    """``file:line:function`` of each frame, innermost last; no message, no locals."""
    _type, _value, tb = exc_info
    return [
        f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}:{frame.name}"
        for frame in traceback.extract_tb(tb)
    ][-12:]


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "ts": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        name = getattr(record, "renkei_event", None)
        if name is not None:
            line["event"] = name
        else:
            line["event"] = "log"
            line["message"] = record.getMessage()
        request_id = getattr(record, "request_id", None) or _current_request_id()
        if request_id:
            line["request_id"] = request_id
        line.update(getattr(record, "renkei_fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = record.exc_info[0].__name__
            line["frames"] = _frames(record.exc_info)
        return json.dumps(line, ensure_ascii=True, separators=(",", ":"), default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is written (not when set up), and marks
    our handler, so setting up twice (two apps in one process) adds it once."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """JSON lines on standard error (gunicorn's error log) for the ``renkei`` logger tree."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    logger.propagate = False
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    return logger
