"""Preflight: the clock against NTP (ntplib → chronyd) and the server name via LGWAN DNS (dnspython → dnsmasq).

The decisions (thresholds, median, naming silent servers) are tested with an
injected query; the real queries against chronyd and dnsmasq on 127.0.0.1.
The "clock far off" cases are real too: a chronyd whose own clock was set
ahead with ``chronyc settime`` (``-x`` keeps that offset inside chronyd).
"""

from __future__ import annotations

import socket
import threading

import pytest

from appliance.agent.preflight import (
    Check,
    DnsError,
    NtpError,
    check_clock,
    check_dns,
    dns_resolve,
    make_resolver,
    ntp_offset,
    split_server,
)
from tests.agent.conftest import AHEAD, LOOPBACK, SERVER_NAME, Chronyd, free_port

FAST = 0.3  # seconds to wait for a server that will not answer


def offsets(table: dict[str, float | Exception]):  # type: ignore[no-untyped-def]
    """A fake NTP query: the offset for each server, or the exception it raises."""

    def query(server: str) -> float:
        value = table[server]
        if isinstance(value, Exception):
            raise value
        return value

    return query


def silent(server: str) -> NtpError:
    return NtpError(f"no answer from NTP server {server} within 2 s", code="ntp.no_answer")


# --- check_clock: the decision -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("measured", "status"),
    [
        ([0.002], "pass"),
        ([-0.999], "pass"),
        ([1.0], "warn"),  # warn ≤ |offset|
        ([-30.0], "warn"),
        ([59.999], "warn"),
        ([60.0], "fail"),  # refuse ≤ |offset|
        ([-3600.0], "fail"),
        ([0.1, 0.2, 500.0], "pass"),  # one wrong server is outvoted by the median
        ([0.1, 500.0, 600.0], "fail"),
        ([0.0, 3.0], "warn"),  # even count: the mean of the middle two (1.5 s)
    ],
)
def test_clock_median_offset_against_thresholds(measured, status):
    servers = {f"10.1.2.{i}": value for i, value in enumerate(measured, start=4)}
    check = check_clock(servers, query=offsets(servers), warn=1.0, refuse=60.0)
    assert check.name == "clock"
    assert check.status == status
    assert (check.hint == "") == (status == "pass")


def test_clock_far_off_explains_direction_in_both_languages():
    behind = check_clock(["10.1.2.4"], query=lambda s: 125.0, warn=1, refuse=60)
    ahead = check_clock(["10.1.2.4"], query=lambda s: -125.0, warn=1, refuse=60)
    assert behind.status == ahead.status == "fail"
    assert "125.000 s behind" in behind.detail and "遅れて" in behind.hint
    assert "125.000 s ahead of" in ahead.detail and "進んで" in ahead.hint
    assert "125 秒" in behind.hint


def test_clock_names_a_silent_server_even_when_the_others_agree():
    servers = {"10.1.2.4": 0.01, "10.1.2.5": silent("10.1.2.5"), "10.1.2.6": 0.02}
    check = check_clock(servers, query=offsets(servers))
    assert check.status == "warn"
    assert "10.1.2.5" in check.detail and "10.1.2.5" in check.hint
    assert "10.1.2.4" not in check.hint
    assert "応答がありません" in check.hint


def test_clock_fails_when_no_server_answers_and_names_them_all():
    servers = {"10.1.2.4": silent("10.1.2.4"), "10.1.2.5": TimeoutError("timed out")}
    check = check_clock(servers, query=offsets(servers))
    assert check.status == "fail"
    assert check.hint.startswith("NTPサーバ 10.1.2.4、10.1.2.5 から応答がありません")
    assert "既存のLGWAN端末の設定を確認してください" in check.hint


def test_clock_without_servers_is_a_warning_not_a_pass():
    check = check_clock([], query=lambda s: pytest.fail("nothing to ask"))
    assert check.status == "warn"
    assert "not checked" in check.detail


@pytest.mark.parametrize(("warn", "refuse"), [(0, 60), (60, 60), (61, 60), (-1, 5)])
def test_clock_thresholds_must_be_ordered(warn, refuse):
    with pytest.raises(ValueError, match="warn < refuse"):
        check_clock(["10.1.2.4"], query=lambda s: 0.0, warn=warn, refuse=refuse)


def test_clock_does_not_swallow_programming_errors():
    def broken(server: str) -> float:
        raise KeyError(server)

    with pytest.raises(KeyError):
        check_clock(["10.1.2.4"], query=broken)


def test_check_serialises_for_status_json():
    check = Check("clock", "pass", "fine", "")
    assert check.to_json() == {"name": "clock", "status": "pass", "detail": "fine", "hint": ""}


# --- server addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.2.3", ("10.1.2.3", 123)),
        ("10.1.2.3:5353", ("10.1.2.3", 5353)),
        (" ntp.lg.jp:1123 ", ("ntp.lg.jp", 1123)),
        ("fd00::1", ("fd00::1", 123)),
        ("[fd00::1]", ("fd00::1", 123)),
        ("[fd00::1]:5353", ("fd00::1", 5353)),
    ],
)
def test_split_server(text, expected):
    assert split_server(text, 123) == expected


@pytest.mark.parametrize(
    "text",
    ["", ":53", "10.1.2.3:", "10.1.2.3:0", "10.1.2.3:65536", "[fd00::1", "[fd00::1]x", "h:dns"],
)
def test_split_server_refuses_nonsense(text):
    with pytest.raises(ValueError):
        split_server(text, 53)


# --- real NTP: ntplib against chronyd ------------------------------------------------------------


def test_ntp_offset_from_chronyd_in_sync(ntp_server):
    offset = ntp_offset(ntp_server.address, timeout=2)
    assert abs(offset) < 0.5
    check = check_clock([ntp_server.address], query=lambda s: ntp_offset(s, timeout=2))
    assert check.status == "pass", check
    assert ntp_server.address in check.detail


def test_ntp_offset_from_chronyd_set_ahead_fails_the_clock(ntp_server_ahead):
    offset = ntp_offset(ntp_server_ahead.address, timeout=2)
    assert AHEAD - 2 < offset < AHEAD + 1
    query = lambda s: ntp_offset(s, timeout=2)  # noqa: E731
    refused = check_clock([ntp_server_ahead.address], query=query, warn=1, refuse=60)
    tolerated = check_clock([ntp_server_ahead.address], query=query, warn=1, refuse=600)
    assert refused.status == "fail" and "behind" in refused.detail
    assert tolerated.status == "warn"


def test_real_median_of_three_chronyds_outvotes_the_wrong_one(
    ntp_server, ntp_server_ahead, tmp_path
):
    second = Chronyd(tmp_path / "second").start()
    try:
        servers = [ntp_server.address, ntp_server_ahead.address, second.address]
        check = check_clock(servers, query=lambda s: ntp_offset(s, timeout=2))
    finally:
        second.stop()
    assert check.status == "pass", check
    assert f"{ntp_server_ahead.address} +1" in check.detail  # its ~+120 s is shown, not used


def test_ntp_port_with_nothing_listening_is_named_as_silent(ntp_server):
    nobody = f"{LOOPBACK}:{free_port()}"
    with pytest.raises(NtpError) as caught:
        ntp_offset(nobody, timeout=FAST)
    assert caught.value.code == "ntp.no_answer" and nobody in str(caught.value)

    query = lambda s: ntp_offset(s, timeout=FAST)  # noqa: E731
    some = check_clock([ntp_server.address, nobody], query=query)
    none = check_clock([nobody], query=query)
    assert some.status == "warn" and nobody in some.hint
    assert none.status == "fail" and none.hint.startswith(
        f"NTPサーバ {nobody} から応答がありません"
    )


def test_ntp_server_that_is_not_an_ntp_server():
    """Something answers on the port, but with garbage: a bad answer, not a timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]

        def answer_garbage() -> None:
            _, peer = sock.recvfrom(512)
            sock.sendto(b"not ntp", peer)

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        with pytest.raises(NtpError) as caught:
            ntp_offset(f"{LOOPBACK}:{port}", timeout=2)
        thread.join(2)
    assert caught.value.code == "ntp.bad_answer"


# --- check_dns: the decision ---------------------------------------------------------------------


def answers(table: dict[str, list[str] | Exception]):  # type: ignore[no-untyped-def]
    def resolve(name: str, server: str) -> list[str]:
        value = table[server]
        if isinstance(value, Exception):
            raise value
        return value

    return resolve


def test_dns_servers_that_agree_pass_with_the_addresses():
    table = {"10.1.2.3": ["192.0.2.10"], "10.1.2.4": ["192.0.2.10"]}
    check, addresses = check_dns("renkei.lg.jp", table, resolve=answers(table))
    assert (check.status, addresses) == ("pass", ["192.0.2.10"])


def test_dns_servers_that_disagree_fail_and_give_no_address():
    table = {"10.1.2.3": ["192.0.2.10"], "10.1.2.4": ["192.0.2.99"]}
    check, addresses = check_dns("renkei.lg.jp", table, resolve=answers(table))
    assert (check.status, addresses) == ("fail", [])
    assert "disagree" in check.detail and "192.0.2.99" in check.detail
    assert "アドレスが異なります" in check.hint


def test_dns_server_that_does_not_answer_is_named():
    table = {
        "10.1.2.3": ["192.0.2.10"],
        "10.1.2.4": DnsError("no answer from DNS server 10.1.2.4 within 2 s", code="dns.timeout"),
    }
    check, addresses = check_dns("renkei.lg.jp", table, resolve=answers(table))
    assert check.status == "fail"
    assert check.hint.startswith("DNSサーバ 10.1.2.4 から応答がありません")
    assert "10.1.2.3" not in check.hint
    assert addresses == ["192.0.2.10"]  # what the answering server said, for the caller to judge


def test_dns_unknown_name_hints_at_the_server_url():
    error = DnsError("DNS server 10.1.2.3 says renkei.lg.jp does not exist", code="dns.nxdomain")
    check, addresses = check_dns("renkei.lg.jp", ["10.1.2.3"], resolve=answers({"10.1.2.3": error}))
    assert (check.status, addresses) == ("fail", [])
    assert "renkei.lg.jp を知りません" in check.hint and "server_url" in check.hint


def test_dns_without_servers_leaves_it_to_the_system():
    check, addresses = check_dns("renkei.lg.jp", [], resolve=answers({}))
    assert (check.status, addresses) == ("pass", [])
    assert "system" in check.detail


# --- real DNS: dnspython against dnsmasq ---------------------------------------------------------


def test_dns_resolve_asks_exactly_the_given_server(lgwan_dns):
    assert dns_resolve(SERVER_NAME, lgwan_dns.address, timeout=2) == [LOOPBACK, "::1"]
    # the system resolver does not know renkei.test; only this server does
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(SERVER_NAME, 443)


def test_dns_resolve_tolerates_a_server_that_refuses_aaaa(dns_server_factory):
    only_v4 = dns_server_factory({SERVER_NAME: ["127.0.0.7"]})  # AAAA: REFUSED (no upstream)
    assert dns_resolve(SERVER_NAME, only_v4.address, timeout=2) == ["127.0.0.7"]


@pytest.mark.parametrize(
    ("name", "code"),
    [("missing.test", "dns.nxdomain"), ("renkei.example", "dns.refused")],
)
def test_dns_resolve_errors_from_a_real_server(lgwan_dns, name, code):
    with pytest.raises(DnsError) as caught:
        dns_resolve(name, lgwan_dns.address, timeout=2)
    assert caught.value.code == code
    assert lgwan_dns.address in str(caught.value)


def test_dns_resolve_times_out_on_a_silent_server():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:  # receives, never answers
        sink.bind((LOOPBACK, 0))
        server = f"{LOOPBACK}:{sink.getsockname()[1]}"
        with pytest.raises(DnsError) as caught:
            dns_resolve(SERVER_NAME, server, timeout=FAST)
    assert caught.value.code == "dns.timeout" and server in str(caught.value)


def test_dns_resolve_wants_a_server_address_not_a_name():
    with pytest.raises(ValueError, match="by its address"):
        dns_resolve(SERVER_NAME, "dns.lg.jp", timeout=FAST)


def test_check_dns_against_real_servers(lgwan_dns, dns_server_factory):
    twin = dns_server_factory({SERVER_NAME: [LOOPBACK, "::1"]})
    liar = dns_server_factory({SERVER_NAME: ["127.0.0.2"]})
    nobody = f"{LOOPBACK}:{free_port()}"
    resolve = lambda name, server: dns_resolve(name, server, timeout=FAST)  # noqa: E731

    good, addresses = check_dns(SERVER_NAME, [lgwan_dns.address, twin.address], resolve=resolve)
    assert (good.status, addresses) == ("pass", [LOOPBACK, "::1"])

    split, addresses = check_dns(SERVER_NAME, [lgwan_dns.address, liar.address], resolve=resolve)
    assert (split.status, addresses) == ("fail", [])
    assert "127.0.0.2" in split.detail

    half, addresses = check_dns(SERVER_NAME, [lgwan_dns.address, nobody], resolve=resolve)
    assert half.status == "fail" and f"DNSサーバ {nobody} から応答がありません" in half.hint
    assert addresses == [LOOPBACK, "::1"]


def test_make_resolver_skips_a_silent_server(lgwan_dns):
    nobody = f"{LOOPBACK}:{free_port()}"
    assert make_resolver([], timeout=FAST) is None
    resolve = make_resolver([nobody, lgwan_dns.address], timeout=FAST)
    assert resolve is not None
    assert resolve(SERVER_NAME) == LOOPBACK
    with pytest.raises(DnsError) as caught:
        resolve("missing.test")
    assert nobody in str(caught.value) and "does not exist" in str(caught.value)
