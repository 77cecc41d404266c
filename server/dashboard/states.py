"""One state per receiving unit, for the fleet grid's colours, its filter and the metrics.

The operator reads ~1,900 cells at a glance, so each cell has exactly one
state: the most urgent thing true of it, in this order —

1. ``never``: 未接続 — no enrolled (unrevoked) terminal: nobody can fetch.
2. ``clock_skew``: 時刻ずれ — a terminal's clock is off by more than
   :data:`server.status.SKEW_LIMIT`; it will soon fail every signed request.
3. ``rejected``: 不備あり — today's uploads had rejected records or a file error.
4. ``not_fetched``: 未受領 — a closed batch is still not acknowledged.
5. ``uploaded``: 送信あり — everything fetched, and a file was received today.
6. ``fetched``: 受領済 — everything fetched, nothing uploaded today (yet).

The rules read :class:`server.status.MunicipalityStatus`, which the
``renkei-server status`` command prints, so the page and the command agree.
Pure: no database, no clock.
"""

from __future__ import annotations

from server.status import MunicipalityStatus

__all__ = ["LABELS", "STATES", "fleet_state"]

#: The states, most urgent first (the order of the counts at the top of the page).
STATES = ("never", "clock_skew", "rejected", "not_fetched", "uploaded", "fetched")
#: What the page says for each state.
LABELS = {
    "never": "未接続",
    "clock_skew": "時刻ずれ",
    "rejected": "不備あり",
    "not_fetched": "未受領",
    "uploaded": "送信あり",
    "fetched": "受領済",
}


def fleet_state(row: MunicipalityStatus) -> str:
    """The one state of a receiving unit (module docstring)."""
    if row.terminals == 0:
        return "never"
    if row.skewed():
        return "clock_skew"
    if row.rejected_today or row.file_errors_today:
        return "rejected"
    if row.pending:
        return "not_fetched"
    if row.uploads_today:
        return "uploaded"
    return "fetched"
