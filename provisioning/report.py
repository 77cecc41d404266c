"""The installation report: what was set up and proved on site, signed by the terminal key.

Why signed: the municipality files the printed page, the ministry may ask
later which appliance was installed with which settings and whether it
worked.  The JSON is a signed statement (``common.statement``) made with the
terminal's own key, whose public half the server holds since enrollment, so
anyone can check later that this appliance wrote it and that nothing was
changed.  The HTML page is the same content in Japanese, for printing; it
carries the key fingerprint and the signature value to match against the JSON.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.agent.preflight import Check
from common import statement
from common.atomicwrite import write_bytes

from .render import Enrollment
from .settings import Settings, settings_to_mapping

__all__ = ["REPORT_KIND", "build_report", "render_html", "write_report"]

REPORT_KIND = "renkei-installation-report"
_STATUS_JA = {"pass": "合格", "warn": "注意", "fail": "不合格"}
_NAMES_JA = {
    "link": "LGWANポートのリンクとアドレス",
    "gateway": "ゲートウェイへの到達",
    "chrony": "時刻同期（chrony）",
    "tls": "連携サーバとのTLS",
    "signed request": "署名付き要求",
    "server clock": "サーバとの時刻差",
    "firewall": "ファイアウォール",
    "timer": "定時実行タイマー",
}


def build_report(
    settings: Settings,
    enrollment: Enrollment,
    key: Ed25519PrivateKey,
    checks: Sequence[tuple[Check, datetime]],
    *,
    now: datetime,
) -> dict:
    """The signed statement: settings, terminal, every check with its time."""
    body = {
        "kind": REPORT_KIND,
        "version": 1,
        "created_at": now.isoformat(timespec="seconds"),
        "lasdec": settings.lasdec,
        "municipality": settings.municipality,
        "terminal_id": enrollment.terminal_id,
        "key_fingerprint": statement.key_id(key.public_key()),
        "server_key_id": statement.key_id(statement.public_key_from_text(enrollment.server_key)),
        "settings": settings_to_mapping(settings),
        "checks": [
            {**check.to_json(), "time": at.isoformat(timespec="seconds")} for check, at in checks
        ],
        "result": "fail"
        if any(c.status == "fail" for c, _ in checks)
        else "warn"
        if any(c.status == "warn" for c, _ in checks)
        else "pass",
    }
    return statement.sign(body, key)


def render_html(signed: dict) -> str:
    """A printable Japanese page of the signed report."""
    body = signed["statement"]
    e = html.escape
    rows = "".join(
        f"<tr class='{e(c['status'])}'><td>{e(_NAMES_JA.get(c['name'], c['name']))}</td>"
        f"<td>{e(_STATUS_JA.get(c['status'], c['status']))}</td><td>{e(c['detail'])}</td>"
        f"<td>{e(c['hint'])}</td><td>{e(c['time'])}</td></tr>"
        for c in body["checks"]
    )
    settings = "".join(
        f"<tr><th>{e(k)}</th><td>{e(', '.join(map(str, v)) if isinstance(v, list) else str(v))}</td></tr>"
        for k, v in body["settings"].items()
    )
    return f"""<!DOCTYPE html>
<html lang="ja"><head><meta charset="utf-8"><title>情報連携端末 設置報告書</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #888;padding:4px;text-align:left;vertical-align:top}}
.fail td{{background:#fdd}}.warn td{{background:#ffd}}@media print{{body{{margin:0}}}}</style>
</head><body>
<h1>情報連携端末 設置報告書</h1>
<table>
<tr><th>地方公共団体</th><td>{e(body["lasdec"])} {e(body["municipality"])}</td></tr>
<tr><th>端末ID</th><td>{e(body["terminal_id"])}</td></tr>
<tr><th>端末鍵の指紋</th><td>{e(body["key_fingerprint"])}</td></tr>
<tr><th>連携サーバ鍵</th><td>{e(body["server_key_id"])}</td></tr>
<tr><th>作成日時</th><td>{e(body["created_at"])}</td></tr>
<tr><th>総合結果</th><td>{e(_STATUS_JA[body["result"]])}</td></tr>
</table>
<h2>設定</h2><table>{settings}</table>
<h2>確認結果</h2>
<table><tr><th>項目</th><th>結果</th><th>内容</th><th>対処</th><th>時刻</th></tr>{rows}</table>
<h2>署名</h2>
<p>この報告書の電子版（JSON）は端末鍵 {e(signed["signature"]["key_id"])} で署名されています。</p>
<p style="word-break:break-all;font-family:monospace">{e(signed["signature"]["value"])}</p>
<p>設置作業者 署名: ____________________　　市町村 確認者: ____________________</p>
</body></html>
"""


def write_report(signed: dict, folder: Path) -> tuple[Path, Path]:
    """``report.json`` and ``report.html`` in ``folder`` (written atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = signed["statement"]["created_at"].replace(":", "").replace("-", "")[:15]
    name = f"installation-{signed['statement']['lasdec']}-{stamp}"
    json_path, html_path = folder / f"{name}.json", folder / f"{name}.html"
    data = json.dumps(signed, ensure_ascii=False, indent=1).encode("utf-8")
    write_bytes(json_path, data + b"\n", mode=0o644)
    write_bytes(html_path, render_html(signed).encode("utf-8"), mode=0o644)
    return json_path, html_path
