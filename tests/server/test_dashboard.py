"""The operator dashboard through the Flask test client: login, the fleet page, a municipality,
revoking a terminal, issuing a token — and what must be refused (no session, a terminal's
signature, a foreign network, a missing or foreign CSRF token).

A small master (three receiving units) and one day: 千代田区 (A) fetched its batch and uploaded
a file with one rejected record, 中央区 (B) has not fetched, 港区 (C) has no terminal.  The
expected values are written out, not computed by the code under test.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from html.parser import HTMLParser

import pytest
import sqlalchemy as sa

from common.items import MUNICIPALITY
from common.noticefile import encode_notice_file
from common.synthetic import SampleFactory
from server.batches import acknowledge, list_batches
from server.dashboard.chart import nice_ceiling, volume_svg
from server.dashboard.states import fleet_state
from server.dashboard.volume import daily_volume
from server.enrollment import enroll, find_terminal
from server.operators import Kdf, add_operator
from server.status import MunicipalityStatus
from server.storage import business_day, enrollment_tokens, terminals, uploads
from server.uploads import receive_upload
from tests.server.conftest import API_A, API_B, API_C, api_enroll, api_publish

BASE = "https://renkei.test"
PASSWORD = "correct horse battery staple"
#: Cheap scrypt for tests that log in many times (the default's cost is tested in test_operators).
TEST_KDF = Kdf(12, 8, 1)
#: The rejected record's values: they appear on the page (operators may see them), never in logs.
BAD_BIRTH_DATE = "19591399"


def municipality_file(lasdec: str, *, seed: int = 5) -> tuple[bytes, list]:
    """Three municipality notices; the second has an impossible birth date (rejected)."""
    records = list(SampleFactory(seed=seed).day_of(MUNICIPALITY, lasdec, 3))
    records[1] = dataclasses.replace(
        records[1], values={**records[1].values, "birth_date": BAD_BIRTH_DATE}
    )
    return encode_notice_file(MUNICIPALITY, records), records


@dataclasses.dataclass
class Day:
    a_terminal: str
    b_terminal: str
    a_key: object
    rejected_record: str
    upload_id: str
    batch_sha256: str


def make_day(services, now) -> Day:  # type: ignore[no-untyped-def]
    """The scenario of the module docstring, at ``now``."""
    storage = services.storage
    api_publish(storage, services.blobs, services.signing_key, now, {API_A: 3, API_B: 2})
    a, a_key = api_enroll(storage, API_A, now - timedelta(hours=2))
    b, _ = api_enroll(storage, API_B, now - timedelta(hours=2))
    [batch] = list_batches(storage, API_A, pending_only=True)
    acknowledge(storage, API_A, batch.batch_id, batch.sha256, a.terminal_id, now=now)
    data, records = municipality_file(API_A)
    receipt, _ = receive_upload(
        storage,
        services.blobs,
        services.signing_key,
        a,
        data,
        file_name="千代田区-20261127.csv",
        now=now,
        max_records=1000,
    )
    return Day(
        a.terminal_id,
        b.terminal_id,
        a_key,
        records[1].record_id,
        receipt["statement"]["upload_id"],
        batch.sha256,
    )


class Browser:
    """The Flask test client with a cookie jar, speaking HTTPS to the app like a browser."""

    def __init__(self, app):  # type: ignore[no-untyped-def]
        self.client = app.test_client()

    def get(self, path: str, **kw):  # type: ignore[no-untyped-def]
        return self.client.get(path, base_url=BASE, **kw)

    def post(self, path: str, data: dict, **kw):  # type: ignore[no-untyped-def]
        return self.client.post(path, data=data, base_url=BASE, **kw)

    def login(self, name: str = "tanaka", password: str = PASSWORD):  # type: ignore[no-untyped-def]
        form = self.get("/dashboard/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)
        return self.post(
            "/dashboard/login", {"name": name, "password": password, "login_token": token}
        )

    def csrf(self, path: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', self.get(path).text).group(1)


@pytest.fixture
def day(api_app, api_clock) -> Day:  # type: ignore[no-untyped-def]
    return make_day(api_app.extensions["renkei"], api_clock())


@pytest.fixture
def operator(api_app, api_clock):  # type: ignore[no-untyped-def]
    storage = api_app.extensions["renkei"].storage
    return add_operator(storage, "tanaka", PASSWORD, now=api_clock(), kdf=TEST_KDF)


@pytest.fixture
def browser(api_app) -> Browser:  # type: ignore[no-untyped-def]
    return Browser(api_app)


@pytest.fixture
def logged_in(browser, operator) -> Browser:  # type: ignore[no-untyped-def]
    reply = browser.login()
    assert reply.status_code == 303 and reply.headers["Location"] == "/dashboard/"
    return browser


class Cells(HTMLParser):
    """The fleet grid's cells (lasdec -> state) and the counts at the top (state -> number)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.rows: list[str] = []
        self._count_state: str | None = None
        self._in_number = False

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "a" and "cell" in classes:
            self.cells[a["data-lasdec"]] = next(c[2:] for c in classes if c.startswith("s-"))
        if tag == "a" and "data-state" in a:
            self._count_state = a["data-state"]
        if tag == "span" and "number" in classes and self._count_state:
            self._in_number = True
        if tag == "tr" and "data-lasdec" in a:
            self.rows.append(a["data-lasdec"])

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        if self._in_number and self._count_state:
            self.counts[self._count_state] = int(data)
            self._in_number = False
            self._count_state = None


def parse(html: str) -> Cells:
    parser = Cells()
    parser.feed(html)
    return parser


# --- access ------------------------------------------------------------------------------------


def test_pages_need_a_login(browser, day):  # type: ignore[no-untyped-def]
    for path in ("/dashboard/", f"/dashboard/m/{API_A}"):
        reply = browser.get(path)
        assert reply.status_code == 302
        assert reply.headers["Location"] == f"/dashboard/login?next={path}"
    reply = browser.post(f"/dashboard/m/{API_A}/terminals/{day.a_terminal}/revoke", {})
    assert reply.status_code == 302
    assert find_terminal(
        browser.client.application.extensions["renkei"].storage, day.a_terminal
    ).active


def test_a_terminal_signature_opens_nothing(api, api_terminal, day):  # type: ignore[no-untyped-def]
    """A request signed with a valid, enrolled terminal key is still not an operator."""
    _terminal, as_terminal = api_terminal(API_A)
    assert as_terminal.get("/api/v1/batches").status_code == 200  # the key works for the API
    for path in ("/dashboard/", f"/dashboard/m/{API_A}"):
        reply = as_terminal.get(path)
        assert reply.status_code == 302 and "/dashboard/login" in reply.headers["Location"]
    reply = as_terminal.post(f"/dashboard/m/{API_A}/tokens", b"ttl_hours=1")
    assert reply.status_code == 302


def test_login_sets_a_strict_host_only_cookie(browser, operator):  # type: ignore[no-untyped-def]
    reply = browser.login()
    assert reply.status_code == 303
    cookie = next(c for c in reply.headers.getlist("Set-Cookie") if "renkei-session=" in c)
    assert cookie.startswith("__Host-renkei-session=")
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie
    assert "Domain" not in cookie
    page = browser.get("/dashboard/")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Request-Id"]


@pytest.mark.parametrize(
    ("name", "password"),
    [
        ("tanaka", "wrong password here"),
        ("nobody", PASSWORD),
        ("TANAKA", "Correct Horse Battery Staple"),
    ],
)
def test_a_wrong_login_is_refused_alike(browser, operator, name, password):  # type: ignore[no-untyped-def]
    reply = browser.login(name, password)
    assert reply.status_code == 401
    assert "アカウント名またはパスワードが違います" in reply.text
    assert "renkei-session" not in " ".join(reply.headers.getlist("Set-Cookie"))


def test_login_names_are_case_insensitive(browser, operator):  # type: ignore[no-untyped-def]
    assert browser.login("TANAKA", PASSWORD).status_code == 303


def test_login_locks_after_repeated_failures(browser, operator, api_clock):  # type: ignore[no-untyped-def]
    for _ in range(5):  # dashboard.lockout_failures default
        assert browser.login("tanaka", "wrong password here").status_code == 401
    locked = browser.login("tanaka", PASSWORD)
    assert locked.status_code == 429 and "ロック" in locked.text
    api_clock.advance(901)  # lockout_window default 900 s
    assert browser.login("tanaka", PASSWORD).status_code == 303


def test_login_form_needs_its_own_cookie(browser, operator):  # type: ignore[no-untyped-def]
    """Login CSRF: a form posted from elsewhere (no double-submit cookie) is refused."""
    reply = browser.post(
        "/dashboard/login", {"name": "tanaka", "password": PASSWORD, "login_token": "forged"}
    )
    assert reply.status_code == 400
    assert "renkei-session" not in " ".join(reply.headers.getlist("Set-Cookie"))


def test_other_networks_get_not_found(api_app, operator):  # type: ignore[no-untyped-def]
    client = api_app.test_client()
    reply = client.get(
        "/dashboard/login", base_url=BASE, environ_base={"REMOTE_ADDR": "10.20.30.40"}
    )
    assert reply.status_code == 404
    reply = client.get("/dashboard/login", base_url=BASE, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert reply.status_code == 200


def test_next_page_never_leaves_the_dashboard(browser, operator):  # type: ignore[no-untyped-def]
    form = browser.get("/dashboard/login?next=//evil.example/x")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)
    reply = browser.post(
        "/dashboard/login",
        {
            "name": "tanaka",
            "password": PASSWORD,
            "login_token": token,
            "next": "https://evil.example/",
        },
    )
    assert reply.headers["Location"] == "/dashboard/"


def test_logout_ends_the_session(logged_in):  # type: ignore[no-untyped-def]
    token = logged_in.csrf("/dashboard/")
    reply = logged_in.post("/dashboard/logout", {"csrf_token": token})
    assert reply.status_code == 303 and reply.headers["Location"] == "/dashboard/login?done=logout"
    assert logged_in.get("/dashboard/").status_code == 302


def test_an_idle_session_ends(logged_in, api_clock):  # type: ignore[no-untyped-def]
    assert logged_in.get("/dashboard/").status_code == 200
    api_clock.advance(1801)  # dashboard.session_idle default 1800 s
    assert logged_in.get("/dashboard/").status_code == 302


# --- the fleet ---------------------------------------------------------------------------------


def test_fleet_counts_grid_and_table(logged_in, day):  # type: ignore[no-untyped-def]
    page = logged_in.get("/dashboard/")
    assert page.status_code == 200
    found = parse(page.text)
    assert found.cells == {API_A: "rejected", API_B: "not_fetched", API_C: "never"}
    assert found.counts == {
        "never": 1,
        "clock_skew": 0,
        "rejected": 1,
        "not_fetched": 1,
        "uploaded": 0,
        "fetched": 0,
    }
    assert found.rows == [API_A, API_B, API_C]
    for label in ("全団体の状況", "東京都", "東京都千代田区", "未受領", "不備あり", "未接続"):
        assert label in page.text
    assert "<svg" in page.text and "法務省通知（市町村へ）" in page.text


@pytest.mark.parametrize(
    ("query", "rows"),
    [
        ("state=not_fetched", [API_B]),
        ("state=never", [API_C]),
        ("q=千代田", [API_A]),
        ("q=131032", [API_C]),
        ("pref=13", [API_A, API_B, API_C]),
        ("pref=01", [API_A, API_B, API_C]),  # not a prefecture of this master: ignored
        ("state=bogus", [API_A, API_B, API_C]),
    ],
)
def test_fleet_filters(logged_in, day, query, rows):  # type: ignore[no-untyped-def]
    found = parse(logged_in.get(f"/dashboard/?{query}").text)
    assert found.rows == rows
    assert sorted(found.cells) == rows
    assert sum(found.counts.values()) == 3, "the counts describe the whole fleet"


def _status(**values) -> MunicipalityStatus:  # type: ignore[no-untyped-def]
    return MunicipalityStatus("131016", "東京都千代田区", **values)


@pytest.mark.parametrize(
    ("row", "state"),
    [
        (_status(), "never"),
        (_status(revoked=1), "never"),
        (_status(terminals=1, clock_skew=61.0, rejected_today=2, pending=1), "clock_skew"),
        (_status(terminals=1, clock_skew=-59.0, rejected_today=2), "rejected"),
        (_status(terminals=1, file_errors_today=1), "rejected"),
        (_status(terminals=1, pending=1, uploads_today=1), "not_fetched"),
        (_status(terminals=1, uploads_today=1, acknowledged=3), "uploaded"),
        (_status(terminals=2, acknowledged=3), "fetched"),
    ],
)
def test_one_state_per_unit_most_urgent_first(row, state):  # type: ignore[no-untyped-def]
    assert fleet_state(row) == state


# --- one municipality --------------------------------------------------------------------------


def test_municipality_page_shows_terminals_batches_and_uploads(logged_in, day, api_app):  # type: ignore[no-untyped-def]
    storage = api_app.extensions["renkei"].storage
    terminal = find_terminal(storage, day.a_terminal)
    page = logged_in.get(f"/dashboard/m/{API_A}")
    assert page.status_code == 200
    text = page.text
    for expected in (
        "東京都千代田区（131016）",
        day.a_terminal,
        terminal.key_id,  # the key fingerprint
        day.batch_sha256,
        "受領済",
        day.upload_id,
        day.rejected_record,
        "date.invalid",
        BAD_BIRTH_DATE,  # the operator sees why (the page is behind the login)
    ):
        assert expected in text, expected
    assert logged_in.get("/dashboard/m/999999").status_code == 404
    assert logged_in.get("/dashboard/m/130001").status_code == 404  # a prefecture: no page


def test_stored_hostile_text_is_shown_escaped(logged_in, day, api_app):  # type: ignore[no-untyped-def]
    """Strings stored before they were refused at the door (an agent version with a C1 CSI, a
    file name with a right-to-left override) are shown as escapes, not acted on or reordered."""
    storage = api_app.extensions["renkei"].storage
    with storage.begin() as conn:
        conn.execute(
            terminals.update()
            .where(terminals.c.terminal_id == day.a_terminal)
            .values(agent_version="1.0\x9b2J")
        )
        conn.execute(
            uploads.update()
            .where(uploads.c.upload_id == day.upload_id)
            .values(file_name="invoice\u202eslx.csv")
        )
    text = logged_in.get(f"/dashboard/m/{API_A}").text
    assert "1.0\\x9b2J" in text and "\x9b" not in text
    assert "invoice\\u202eslx.csv" in text and "\u202e" not in text
    assert "東京都千代田区（131016）" in text  # Japanese is text, shown as it is


def test_revoke_needs_confirmation_and_csrf(logged_in, day, api_app, api):  # type: ignore[no-untyped-def]
    storage = api_app.extensions["renkei"].storage
    path = f"/dashboard/m/{API_A}/terminals/{day.a_terminal}/revoke"
    confirm = logged_in.get(path)
    assert confirm.status_code == 200
    assert "端末を失効させますか" in confirm.text and day.a_terminal in confirm.text
    assert find_terminal(storage, day.a_terminal).active, "showing the question changes nothing"

    assert logged_in.post(path, {}).status_code == 400
    assert logged_in.post(path, {"csrf_token": "forged"}).status_code == 400
    token = re.search(r'name="csrf_token" value="([^"]+)"', confirm.text).group(1)
    foreign = logged_in.post(
        path, {"csrf_token": token}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 400
    assert find_terminal(storage, day.a_terminal).active

    done = logged_in.post(path, {"csrf_token": token}, headers={"Origin": BASE})
    assert done.status_code == 303
    assert done.headers["Location"] == f"/dashboard/m/{API_A}?done=revoked"
    assert not find_terminal(storage, day.a_terminal).active
    assert "端末を失効させました" in logged_in.get(done.headers["Location"]).text
    # The terminal's next request is refused.
    reply = api.as_terminal(day.a_key, day.a_terminal).get("/api/v1/batches")
    assert reply.status_code == 401 and reply.get_json()["error"]["code"] == "auth.revoked"


def test_a_terminal_is_revoked_only_through_its_own_municipality(logged_in, day, api_app):  # type: ignore[no-untyped-def]
    token = logged_in.csrf(f"/dashboard/m/{API_B}")
    reply = logged_in.post(
        f"/dashboard/m/{API_B}/terminals/{day.a_terminal}/revoke", {"csrf_token": token}
    )
    assert reply.status_code == 404
    assert find_terminal(api_app.extensions["renkei"].storage, day.a_terminal).active


def test_issued_token_enrolls_once_and_is_stored_hashed(logged_in, day, api_app, api_clock):  # type: ignore[no-untyped-def]
    storage = api_app.extensions["renkei"].storage
    csrf = logged_in.csrf(f"/dashboard/m/{API_C}")
    assert logged_in.post(f"/dashboard/m/{API_C}/tokens", {"ttl_hours": "2"}).status_code == 400
    reply = logged_in.post(f"/dashboard/m/{API_C}/tokens", {"csrf_token": csrf, "ttl_hours": "2"})
    assert reply.status_code == 200
    token = re.search(r'<p class="token" id="token"><code>([0-9A-Z-]+)</code>', reply.text).group(1)
    assert re.fullmatch(r"[0-9A-Z]{5}(-[0-9A-Z]{5}){3}", token)
    with storage.read() as conn:
        stored = conn.execute(
            sa.select(enrollment_tokens).where(enrollment_tokens.c.lasdec == API_C)
        ).one()
    assert token not in repr(stored) and token.replace("-", "") not in repr(stored)
    assert stored.expires_at - stored.created_at == timedelta(hours=2)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from common import statement

    key = Ed25519PrivateKey.generate()
    terminal = enroll(
        storage, token, statement.public_key_to_text(key.public_key()), now=api_clock()
    )
    assert terminal.lasdec == API_C
    assert parse(logged_in.get("/dashboard/").text).cells[API_C] == "not_fetched"


# --- the volume chart --------------------------------------------------------------------------


def test_daily_volume_counts_both_directions_by_japanese_day(api_app, api_clock, day):  # type: ignore[no-untyped-def]
    services = api_app.extensions["renkei"]
    today = business_day(api_clock())
    volume = daily_volume(services.storage, today=today)
    assert (
        len(volume) == 90
        and volume[-1].day == today
        and volume[0].day == today - timedelta(days=89)
    )
    assert (volume[-1].ministry, volume[-1].municipality) == (5, 2)  # 3 + 2 + 0; 2 of 3 accepted
    assert all((v.ministry, v.municipality) == (0, 0) for v in volume[:-1])
    only_a = daily_volume(services.storage, today=today, lasdec=API_A)
    assert (only_a[-1].ministry, only_a[-1].municipality) == (3, 2)
    # 15:30 UTC is 00:30 the next day in Japan: an upload then counts for the next day.
    b = find_terminal(services.storage, day.b_terminal)
    late = api_clock() + timedelta(hours=6, minutes=30)
    data, _ = municipality_file(API_B, seed=9)
    receive_upload(
        services.storage, services.blobs, services.signing_key, b, data,
        file_name="b.csv", now=late, max_records=1000,
    )  # fmt: skip
    tomorrow = daily_volume(services.storage, today=today + timedelta(days=1))
    assert (tomorrow[-2].municipality, tomorrow[-1].municipality) == (2, 2)


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0, 1), (1, 1), (2, 2), (3, 5), (7, 10), (10, 10), (11, 20), (180, 200), (501, 1000)],
)
def test_axis_maximum_is_a_round_number(value, ceiling):  # type: ignore[no-untyped-def]
    assert nice_ceiling(value) == ceiling


def test_chart_has_a_bar_pair_and_a_tooltip_per_day():  # type: ignore[no-untyped-def]
    from datetime import date

    from server.dashboard.volume import DayVolume

    days = [DayVolume(date(2026, 11, 1) + timedelta(days=n), n, 2 * n) for n in range(30)]
    svg = str(volume_svg(days, title="テスト <&>"))
    assert svg.count('<g class="day">') == 30
    assert svg.count('class="bar-ministry"') == 31  # 30 bars and the legend
    assert "2026-11-30 法務省通知 29 件 / 市町村通知 58 件" in svg
    assert "テスト &lt;&amp;&gt;" in svg and "<&>" not in svg
    assert "style=" not in svg, "no inline styles: the CSP allows none"
