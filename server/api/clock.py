"""GET /api/v1/time — the server's clock, for the terminal's check before it signs anything.

Unsigned on purpose: a terminal whose clock is off cannot make a signature
the server accepts (``created`` must be within the window), so it has to be
able to ask for the time first.  The answer is not a secret and changes
nothing; the terminal still trusts it only over TLS to the pinned server, and
uses NTP from the municipality's LGWAN settings to actually set its clock.
"""

from __future__ import annotations

from flask import Blueprint

from server.api import API_PREFIX
from server.app import services

bp = Blueprint("clock", __name__, url_prefix=API_PREFIX)


@bp.get("/time")
def server_time():
    now = services().now()
    text = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"time": text, "epoch": now.timestamp()}, 200, {"Cache-Control": "no-store"}
