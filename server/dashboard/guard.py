"""What every dashboard request passes: the network allow-list, the login, CSRF, safe headers.

* **Network**: the pages answer only clients whose address is in
  ``dashboard.networks`` (default: this host only); anyone else — e.g. a
  terminal on LGWAN — gets the same 404 as for a page that does not exist.
* **Login**: the session cookie (``__Host-renkei-session``: Secure, HttpOnly,
  SameSite=Strict, host-only, path /) names a server-side session
  (:mod:`server.operators`).  Nothing else opens a page: a terminal's request
  signature is not even looked at, so a terminal key never grants access.
* **CSRF**: every POST carries the session's CSRF token in a hidden field
  (synchronizer token) and, when the browser sends one, an ``Origin`` equal to
  this server's; SameSite=Strict already keeps the cookie off cross-site
  requests — the token is the second lock.  The login form, which has no
  session yet, uses a double-submit cookie (``__Host-renkei-login``).
* **Headers**: a strict Content-Security-Policy (no scripts at all, styles and
  images from this origin only, no framing, forms only to this origin),
  ``no-store`` caching (pages show tokens and key fingerprints), referrers only to this origin.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from server.app import services
from server.operators import Session, load_session
from server.storage import TOKYO

__all__ = [
    "LOGIN_COOKIE",
    "PREFIX",
    "SESSION_COOKIE",
    "check_csrf",
    "check_network",
    "install",
    "page",
    "require_operator",
    "set_cookie",
]

PREFIX = "/dashboard"
SESSION_COOKIE = "__Host-renkei-session"
LOGIN_COOKIE = "__Host-renkei-login"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_log = logging.getLogger("renkei.server.dashboard")


@cache
def _networks(
    networks: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def check_network() -> None:
    """``before_request``: 404 unless the client address is in ``dashboard.networks``."""
    try:
        address = ipaddress.ip_address((request.remote_addr or "").split("%", 1)[0])
    except ValueError:
        abort(404)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not any(address in net for net in _networks(services().config.dashboard.networks)):
        abort(404)


def current_session() -> Session | None:
    """The logged-in operator's session of this request (looked up once)."""
    if "session" not in g:
        ctx = services()
        token = request.cookies.get(SESSION_COOKIE, "")
        g.session = (
            load_session(ctx.storage, token, now=ctx.now(), idle=ctx.config.dashboard.session_idle)
            if token
            else None
        )
    return g.session


def require_operator() -> Response | None:
    """``before_request`` of the pages behind the login: the login page otherwise."""
    if current_session() is None:
        return redirect(url_for("dashboard_login.login_form", next=request.path))
    if request.method == "POST":
        check_csrf()
    return None


def _same_origin() -> bool:
    """True when the browser sent no Origin (then the token alone decides) or ours."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme == request.scheme and parts.netloc == request.host


def check_csrf() -> None:
    """400 unless the form's ``csrf_token`` is the session's and the Origin (if any) is ours."""
    session = current_session()
    sent = request.form.get("csrf_token", "")
    if session is None or not _same_origin():
        abort(400, "csrf")
    if not hmac.compare_digest(sent.encode("utf-8", "replace"), session.csrf_token.encode()):
        abort(400, "csrf")


def set_cookie(response: Response, name: str, value: str, *, max_age: int | None = None) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="Strict"
    )


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    # Not "no-referrer": with it browsers send "Origin: null" on form posts, which the CSRF
    # check must refuse.  "same-origin" keeps the referrer (and ids in URLs) on this server.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return response


def page(template: str, code: int = 200, /, **context: Any) -> tuple[str, int]:
    """Render a dashboard page with what every page needs (operator, CSRF token)."""
    session = g.get("session")
    return (
        render_template(
            f"dashboard/{template}",
            operator=session.operator if session else None,
            csrf_token=session.csrf_token if session else "",
            **context,
        ),
        code,
    )


_MESSAGES = {
    400: "リクエストを受け付けられませんでした。画面を開き直して、もう一度操作してください。",
    403: "この操作は許可されていません。",
    404: "ページが見つかりません。",
    405: "この操作はできません。",
    413: "送信された内容が大きすぎます。",
}


def _on_http_error(error: HTTPException) -> tuple[str, int]:
    status = error.code or 500
    message = _MESSAGES.get(status, "エラーが発生しました。")
    if status == 400 and error.description == "csrf":
        message = "操作の有効期限が切れたか、別の画面からの送信です。画面を開き直してください。"
    return page("error.html", status, status=status, message=message)


def _on_unexpected(error: Exception) -> tuple[str, int]:
    _log.exception("dashboard error on %s", request.endpoint)
    return page("error.html", 500, status=500, message="サーバーでエラーが発生しました。")


def _jst(value: Any, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return value.astimezone(TOKYO).strftime(fmt) if value is not None else "-"


def install(bp: Blueprint, *, login_required: bool) -> Blueprint:
    """Attach the checks, headers, error pages and template filters to a dashboard blueprint."""
    bp.before_request(check_network)
    if login_required:
        bp.before_request(require_operator)
    bp.after_request(security_headers)
    bp.register_error_handler(HTTPException, _on_http_error)
    bp.register_error_handler(Exception, _on_unexpected)
    bp.add_app_template_filter(_jst, "jst")
    return bp
