"""``eventlog.event`` builds its record itself (no stack walk, issue 10): it must still honour
the logger's level, its filters and its handlers exactly like ``Logger.log``."""

from __future__ import annotations

import json
import logging

import pytest

from server import eventlog


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(eventlog.JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def lines():  # type: ignore[no-untyped-def]
    logger = logging.getLogger(eventlog.LOGGER)
    handler = _Lines()
    level = logger.level
    logger.addHandler(handler)
    try:
        yield logger, handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.filters.clear()


def test_event_line_fields_and_level(lines):  # type: ignore[no-untyped-def]
    logger, seen = lines
    logger.setLevel(logging.INFO)
    eventlog.event("batch.sent", level=logging.WARNING, batch_id="b-1", count=3, name="山田")
    assert len(seen) == 1
    line = seen[0]
    assert line["event"] == "batch.sent"
    assert line["level"] == "warning"
    assert line["logger"] == "renkei"
    assert (line["batch_id"], line["count"], line["name"]) == ("b-1", 3, "[dropped]")
    assert "message" not in line


def test_event_below_the_level_is_not_written(lines):  # type: ignore[no-untyped-def]
    logger, seen = lines
    logger.setLevel(logging.WARNING)
    eventlog.event("http.request", status=200)
    assert seen == []


def test_event_goes_through_the_loggers_filters(lines):  # type: ignore[no-untyped-def]
    logger, seen = lines
    logger.setLevel(logging.INFO)
    logger.addFilter(lambda record: getattr(record, "renkei_event", None) != "http.request")
    eventlog.event("http.request", status=200)
    eventlog.event("mail.sent", count=1)
    assert [line["event"] for line in seen] == ["mail.sent"]
