"""``/dashboard/login`` and ``/dashboard/logout``: an operator's session begins and ends here.

The login form is protected against login CSRF by a double-submit cookie
(the form's hidden ``login_token`` must equal the ``__Host-renkei-login``
cookie, which a cross-site page can neither read nor, with SameSite=Strict,
make the browser send).  A refusal says the same for a wrong name, a wrong
password and a disabled account; a locked name is told it is locked, which
an attacker learns anyway by the refusals stopping.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, abort, current_app, g, redirect, request, url_for

from server.app import services
from server.eventlog import event
from server.metrics import EXTENSION as METRICS
from server.operators import LoginError, authenticate, end_session, start_session

from .guard import (
    LOGIN_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    check_csrf,
    current_session,
    install,
    new_login_token,
    page,
    set_cookie,
)

bp = install(
    Blueprint(
        "dashboard_login",
        __name__,
        url_prefix=PREFIX,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    ),
    login_required=False,
)

_REFUSALS = {
    "login.invalid": "アカウント名またはパスワードが違います。",
    "login.locked": (
        "ログインの失敗が続いたため、このアカウント名は一時的にロックされています。"
        "しばらく待ってから再度お試しいただくか、別の運用者に解除を依頼してください。"
    ),
}
_DONE = {"logout": "ログアウトしました。", "expired": "ログインの有効期限が切れました。"}


def _next_page(value: str | None) -> str:
    """Where to go after login: a dashboard path only (never another site)."""
    if value and value.startswith(PREFIX + "/") and "//" not in value and "\\" not in value:
        return value
    return url_for("dashboard_fleet.fleet")


def _form(status: int = 200, *, error: str | None = None, name: str = "") -> Response:
    token = new_login_token()
    body, code = page(
        "login.html",
        status,
        login_token=token,
        error=error,
        done=_DONE.get(request.args.get("done", "")),
        name=name,
        next=_next_page(request.values.get("next")),
    )
    response = current_app.make_response((body, code))
    set_cookie(response, LOGIN_COOKIE, token, max_age=3600)
    return response


@bp.get("/login")
def login_form():
    if current_session() is not None:
        return redirect(url_for("dashboard_fleet.fleet"))
    return _form()


@bp.post("/login")
def login():
    ctx = services()
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = request.form.get("login_token", "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode("utf-8", "replace")):
        abort(400, "csrf")
    name = request.form.get("name", "")[:200]
    password = request.form.get("password", "")
    settings = ctx.config.dashboard
    now = ctx.now()
    try:
        operator = authenticate(
            ctx.storage,
            name,
            password,
            now=now,
            max_failures=settings.lockout_failures,
            window=settings.lockout_window,
        )
    except LoginError as error:
        outcome = "locked" if error.code == "login.locked" else "invalid"
        current_app.extensions[METRICS].operator_logins.labels(outcome).inc()
        event("dashboard.login", outcome=outcome, code=error.code)
        status = 429 if outcome == "locked" else 401
        return _form(status, error=_REFUSALS[error.code], name=name)
    token, session = start_session(
        ctx.storage, operator, now=now, lifetime=settings.session_lifetime
    )
    g.session = session
    current_app.extensions[METRICS].operator_logins.labels("success").inc()
    event("dashboard.login", outcome="success", operator_id=operator.operator_id)
    response = redirect(_next_page(request.form.get("next")), code=303)
    set_cookie(response, SESSION_COOKIE, token)
    response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response


@bp.post("/logout")
def logout():
    session = current_session()
    if session is not None:
        check_csrf()
        end_session(services().storage, request.cookies.get(SESSION_COOKIE, ""))
        event("dashboard.logout", operator_id=session.operator.operator_id)
    response = redirect(url_for("dashboard_login.login_form", done="logout"), code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response
