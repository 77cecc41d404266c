"""Server faults on demand: a WSGI middleware the e2e tests' gunicorn config wraps around the app.

Never part of the server: ``tests/e2e/gunicorn.conf.py`` installs it in
each worker (``post_worker_init``) only when ``RENKEI_E2E_FAULTS`` names a
control file.  The test writes the control file (JSON, replaced
atomically); every request reads it and the first matching rule applies:

``{"id", "action": "fail", "status": 503, "when": "before"|"after", "count": n}``
    answer ``status`` instead of the app (``before``), or after the app has
    done its work and committed (``after``: the server did it, the caller
    never hears) — the next ``count`` matching requests, or all.
``{"id", "action": "hold", "when": "before"|"after"|"body", "bytes": n}``
    stop the request until the rule is released (``"released": true`` or
    removed): before the app runs, after it ran but before a byte of the
    answer is sent, or in the middle of the body once ``bytes`` were sent.
    While it is held the test cuts the line, kills the server or the agent:
    a fault at an exact point, not after a guessed delay.

Rules match on ``method``, ``path`` (a regular expression searched in the
path) and optionally ``terminal`` (the key id in ``Signature-Input``).
Each time a rule applies, a JSON line goes to ``<control>.events``
(``held``, ``released``, ``failed``) so the test can wait for it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["FaultMiddleware", "HOLD_LIMIT"]

#: A hold that nobody releases ends by itself after this many seconds.
HOLD_LIMIT = 120.0
_KEYID = re.compile(r'keyid="([^"]*)"')


class FaultMiddleware:
    """Wraps a WSGI app; see the module docstring."""

    def __init__(self, app: Callable, control: Path):
        self.app = app
        self.control = Path(control)
        self.events = self.control.with_name(self.control.name + ".events")
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- rules ------------------------------------------------------------------------------

    def _rules(self) -> list[dict]:
        try:
            rules = json.loads(self.control.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return []
        return [rule for rule in rules if isinstance(rule, dict)] if isinstance(rules, list) else []

    def _match(self, environ: dict) -> dict | None:
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        found = _KEYID.search(environ.get("HTTP_SIGNATURE_INPUT", ""))
        terminal = found.group(1) if found else None
        for rule in self._rules():
            if rule.get("released"):
                continue
            if rule.get("method") not in (None, method):
                continue
            if not re.search(rule.get("path", ""), path):
                continue
            if rule.get("terminal") not in (None, terminal):
                continue
            with self._lock:
                used = self._used.get(rule["id"], 0)
                if rule.get("count") is not None and used >= rule["count"]:
                    continue
                self._used[rule["id"]] = used + 1
            return rule
        return None

    def _event(self, rule: dict, event: str, environ: dict) -> None:
        line = {
            "rule": rule["id"],
            "event": event,
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "time": time.time(),
        }
        with self._lock, self.events.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")

    def _wait_release(self, rule: dict) -> None:
        deadline = time.monotonic() + HOLD_LIMIT
        while time.monotonic() < deadline:
            current = {r.get("id"): r for r in self._rules()}.get(rule["id"])
            if current is None or current.get("released"):
                return
            time.sleep(0.05)

    # -- WSGI -------------------------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        rule = self._match(environ)
        if rule is None:
            return self.app(environ, start_response)
        when = rule.get("when", "before")
        if rule["action"] == "fail" and when == "before":
            self._event(rule, "failed", environ)
            return self._error(rule, start_response)
        if rule["action"] == "hold" and when == "before":
            self._event(rule, "held", environ)
            self._wait_release(rule)
            self._event(rule, "released", environ)
            return self.app(environ, start_response)
        if rule["action"] == "hold" and when == "body":
            return self._held_body(rule, environ, start_response)
        # "after": the app does its work (and commits) first.
        answer: dict[str, Any] = {}

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable:
            answer["status"], answer["headers"] = status, headers
            return lambda data: None

        body = self.app(environ, capture)
        try:
            data = b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        if rule["action"] == "fail":
            self._event(rule, "failed", environ)
            return self._error(rule, start_response)
        self._event(rule, "held", environ)
        self._wait_release(rule)
        self._event(rule, "released", environ)
        start_response(answer["status"], answer["headers"])
        return [data]

    def _held_body(self, rule: dict, environ: dict, start_response: Callable) -> Iterator[bytes]:
        body = self.app(environ, start_response)
        limit = int(rule.get("bytes", 1))
        sent = 0
        held = False
        try:
            for chunk in body:
                if not held and sent + len(chunk) >= limit:
                    # Exactly ``limit`` bytes, then the hold: the app writes in large blocks.
                    head, chunk = chunk[: limit - sent], chunk[limit - sent :]
                    yield head
                    sent += len(head)
                    held = True
                    self._event(rule, "held", environ)
                    self._wait_release(rule)
                    self._event(rule, "released", environ)
                if chunk:
                    yield chunk
                    sent += len(chunk)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    @staticmethod
    def _error(rule: dict, start_response: Callable) -> list[bytes]:
        status = int(rule.get("status", 503))
        body = json.dumps(
            {"error": {"code": f"http.{status}", "message": "injected by the e2e tests"}}
        ).encode()
        reason = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
        start_response(
            f"{status} {reason.get(status, 'Error')}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]
