"""Scenario 4: attacks on the LGWAN — nothing let in, nothing placed that the ministry did not sign.

From a terminal (a compromised appliance, or staff poking at it) and from
the LGWAN (a machine on the router): another municipality's batch, an
unenrolled key, a man in the middle holding a certificate the terminal
trusts who forges the manifest, the file or the receipt — and, without
that certificate, only breaks TLS — replays of what it recorded, outbox
names that try to climb out of the folder, traffic from the terminal to
anything outside its allow-list, and a port scan of the terminal.

One more attack was a finding of this suite, now fixed in ``server/auth.py``:
anyone who knew a terminal's id could lock it out by sending
``failed_auth_limit`` requests with bad signatures under that id; failures
now count per key id and client address.
"""

from __future__ import annotations

import base64
import json
import os
import time
from urllib.parse import quote

import dns.message
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.agent.transport import load_private_key
from common import statement
from common.items import MUNICIPALITY
from common.noticefile import encode_notice_file
from provisioning.checks import icmp_echo
from server.batches import list_batches
from tests.provisioning.topology import in_netns

from . import invariants
from .attacker import Listener, Mitm, connect, error_code, scan, send, udp
from .network import DNS_ADDRESS, NTP_ADDRESS, SERVER_ADDRESS, SMTP_ADDRESS
from .report import emit
from .world import ELSEWHERE, World, municipality_records

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NTP_REQUEST = b"\x23" + bytes(47)  # NTPv4, client mode


def _key(terminal) -> tuple[Ed25519PrivateKey, str]:  # type: ignore[no-untyped-def]
    """The terminal's own key and id, as someone with root on the appliance has them."""
    return load_private_key(terminal.view("/var/lib/renkei/terminal-key.pem")), terminal.enrollment[
        "terminal_id"
    ]


def test_attacks(world: World, request, tmp_path):  # type: ignore[no-untyped-def]
    a, b, _c = (world.terminals[code] for code in world.lasdecs)
    server = world.server
    ca = server.ca_file
    rows: list[tuple[str, str, str]] = []
    key_a, id_a = _key(a)

    # --- a terminal asks for another municipality's batch -------------------------------------
    world.publish({a.lasdec: 3, b.lasdec: 3})
    theirs = list_batches(server.storage, b.lasdec, pending_only=True)[-1]
    for method, path, body in (
        ("GET", f"/api/v1/batches/{theirs.batch_id}", b""),
        ("GET", f"/api/v1/batches/{theirs.batch_id}/manifest", b""),
        (
            "POST",
            f"/api/v1/batches/{theirs.batch_id}/ack",
            json.dumps({"sha256": theirs.sha256}).encode(),
        ),
    ):
        headers = {"Content-Type": "application/json"} if body else {}
        status, answer = request_(a, method, path, body, ca, key_a, id_a, headers)
        assert (status, error_code(answer)) == (404, "batch.not_found"), (path, status, answer)
    status, listing = request_(a, "GET", "/api/v1/batches?all=1", b"", ca, key_a, id_a)
    assert status == 200 and {x["lasdec"] for x in listing["batches"]} == {a.lasdec}
    assert list_batches(server.storage, b.lasdec, pending_only=True)[-1].pending
    rows.append(
        (
            "another municipality's batch",
            f"{a.lasdec} asks for {theirs.batch_id}",
            "404 batch.not_found (file, manifest, ack); listing shows only its own",
        )
    )

    # --- a key the server never enrolled ---------------------------------------------------------
    stranger = Ed25519PrivateKey.generate()
    for key_id, expected in (("t_00000000deadbeef", "sig.unknown_key"), (id_a, "sig.invalid")):
        status, answer = request_(a, "GET", "/api/v1/batches", b"", ca, stranger, key_id)
        assert (status, error_code(answer)) == (401, expected), (key_id, status, answer)
    rows.append(
        (
            "unenrolled key",
            "unknown key id; and a's id with another key",
            "401 sig.unknown_key; 401 sig.invalid",
        )
    )

    # --- a man in the middle with a trusted certificate forges what the terminal gets --------
    world.catch_up()
    outcomes = {}
    for forge, expected in (("manifest", "batch.signature"), ("file", "batch.hash_mismatch")):
        world.drop_day(a, 2, bad=False)
        world.publish({a.lasdec: 4})
        mitm = Mitm(world.net, a.link, tmp_path, server_ca=ca, forge=forge)
        inbox_before = set(a.files("inbox"))
        with mitm.running():
            run = a.agent()
        assert expected in run.codes(), run.summary
        assert set(run.outcomes("batches")) == {"quarantined"}, run.summary["batches"]
        assert set(a.files("inbox")) == inbox_before  # nothing placed
        assert list_batches(server.storage, a.lasdec, pending_only=True)  # nothing acknowledged
        assert any(p.name.endswith(".report.txt") for p in a.folder_view("quarantine").iterdir())
        invariants.check(world, final=False)
        outcomes[forge] = (run, mitm.recorded())
        rows.append(
            (
                f"MITM (trusted cert) forges the {forge}",
                "batch for " + a.lasdec,
                f"quarantined ({expected}), not placed, not acknowledged",
            )
        )

    world.drop_day(a, 2, bad=False)
    mitm = Mitm(world.net, a.link, tmp_path, server_ca=ca, forge="receipt")
    with mitm.running():
        run = a.agent()
    assert "receipt.invalid" in run.codes(), run.summary
    assert not [n for n in a.files("sent") if n.startswith(a.drops[-1].name)]
    invariants.check(world, final=False)
    rows.append(
        (
            "MITM (trusted cert) forges the receipt",
            "upload from " + a.lasdec,
            "receipt.invalid: not filed as sent, sent again later",
        )
    )

    mitm = Mitm(world.net, a.link, tmp_path, server_ca=ca, forge="none")
    with mitm.running(trusted=False):
        run = a.agent()
    assert "net.tls" in run.codes() and not run.summary["batches"], run.summary
    assert not mitm.recorded()  # TLS failed before a single request
    rows.append(
        (
            "MITM without a trusted cert",
            "all of " + a.lasdec + "'s traffic",
            "net.tls: nothing sent, nothing received",
        )
    )

    # --- replays of what the man in the middle recorded -------------------------------------
    captured = outcomes["manifest"][1]
    for wanted in ("GET /api/v1/batches", "POST /api/v1/uploads"):
        method, path = wanted.split(" ")
        entry = next(e for e in captured if e["method"] == method and e["path"] == path)
        status, answer = send(
            world.net.router,
            method,
            path,
            base64.b64decode(entry["body"]),
            ca_file=ca,
            headers=entry["headers"],
        )
        assert (status, error_code(answer)) == (401, "auth.replay"), (wanted, status, answer)
    rows.append(
        ("replay of recorded requests", "listing and upload, from the router", "401 auth.replay")
    )

    counts = world.catch_up()
    rows.append(
        (
            "after the attacks",
            "MITM gone; send now",
            f"batches placed once, uploads once ({counts[a.lasdec]['records']} records)",
        )
    )

    # --- outbox names that climb out, and a link to a secret --------------------------------
    escape = "notice\\..\\..\\..\\etc\\cron.d\\renkei"
    hidden = "..\\..\\etc\\cron.d\\renkei"  # a dot name: never the agent's to take
    good = encode_notice_file(MUNICIPALITY, municipality_records(a.lasdec, 2, world.tag("esc")))
    a.drop(escape, good, expect="rejected")
    a.drop(hidden, good + b"\r\n", expect="outbox")
    link = a.folder_view("outbox") / "secret.csv"
    os.symlink("../../../etc/shadow", link)
    a.dropped("secret.csv", b"", expect="special")
    shadow = a.view("/etc/shadow").read_bytes()
    run = a.agent()
    by_name = {e["name"]: e for e in run.summary["files"]}
    assert by_name[escape]["outcome"] == "rejected", run.summary["files"]
    assert by_name[escape]["code"] == "name.separator", by_name[escape]
    assert hidden not in by_name and a.folder_view("outbox").joinpath(hidden).exists()
    assert a.folder_view("rejected").joinpath("secret.csv").is_symlink()
    assert a.view("/etc/shadow").read_bytes() == shadow
    for folder in ("sent", "rejected", "outbox"):
        for path in a.folder_view(folder).iterdir():
            assert path.is_symlink() or shadow not in path.read_bytes()
    rows.append(
        (
            "outbox names with ..\\, a symlink",
            "staff folder of " + a.lasdec,
            "rejected unread (name.separator, file.symlink); a dot name left alone; "
            "nothing outside touched",
        )
    )
    for name in ("../../etc/passwd", "..", "..\\evil.csv"):
        status, answer = request_(
            a,
            "POST",
            "/api/v1/uploads",
            good,
            ca,
            key_a,
            id_a,
            {"Content-Type": "application/octet-stream", "Renkei-File-Name": quote(name, safe="")},
        )
        assert (status, error_code(answer)) == (400, "upload.file_name"), (name, status, answer)
    rows.append(
        (
            "upload named ../../etc/passwd",
            "signed by a's own key",
            "400 upload.file_name; nothing stored",
        )
    )
    invariants.check(world, final=False)

    # --- the terminal may reach only its allow-list -----------------------------------------
    listeners = [
        Listener(
            world.net,
            world.net.ministry,
            [
                f"tcp:{SERVER_ADDRESS}:22",
                f"tcp:{SERVER_ADDRESS}:80",
                f"tcp:{SERVER_ADDRESS}:8443",
                f"tcp:{SMTP_ADDRESS}:443",
            ],
        ),
        Listener(
            world.net,
            world.net.router,
            [
                f"tcp:{DNS_ADDRESS}:443",
                f"tcp:{a.link.gateway}:22",
                f"udp:{DNS_ADDRESS}:5353",
                f"udp:{NTP_ADDRESS}:124",
            ],
        ),
    ]
    try:
        refused = [
            ("tcp", SERVER_ADDRESS, 22),
            ("tcp", SERVER_ADDRESS, 80),
            ("tcp", SERVER_ADDRESS, 8443),
            ("tcp", SMTP_ADDRESS, 443),
            ("tcp", DNS_ADDRESS, 443),
            ("tcp", a.link.gateway, 22),
            ("tcp", b.link.address, 22),
            ("udp", DNS_ADDRESS, 5353),
            ("udp", NTP_ADDRESS, 124),
            ("udp", "192.0.2.1", 53),
            ("tcp", "198.51.100.7", 443),
        ]
        for _proto, host, port in refused[:6]:  # the control: from the router they answer
            assert connect(world.net.router, host, port) == "open", (host, port)
        for proto, host, port in refused:
            got = (
                connect(a.link.namespace, host, port, timeout=0.5)
                if proto == "tcp"
                else udp(a.link.namespace, host, port, b"ping", timeout=0.5)
            )
            # dropped by the output chain: EPERM, or the SYN/datagram just vanishes
            assert got in ("dropped here", "no answer"), (proto, host, port, got)
        allowed = {
            "server 443": connect(a.link.namespace, SERVER_ADDRESS, 443),
            "SMTP 25": connect(a.link.namespace, SMTP_ADDRESS, 25),
            "DNS 53": udp(
                a.link.namespace,
                DNS_ADDRESS,
                53,
                dns.message.make_query("renkei.test", "A").to_wire(),
            ),
            "NTP 123": udp(a.link.namespace, NTP_ADDRESS, 123, NTP_REQUEST),
        }
        assert set(allowed.values()) <= {"open", "answered"}, allowed
    finally:
        for listener in listeners:
            listener.close()
    rows.append(
        (
            "terminal → outside its allow-list",
            f"{len(refused)} address/port pairs",
            "all dropped by nftables (EPERM or silence); server, SMTP, DNS, NTP reachable",
        )
    )

    # --- a port scan of the terminal from the LGWAN -------------------------------------------
    inside = Listener(
        world.net,
        a.link.namespace,
        [
            "tcp:0.0.0.0:22",
            "tcp:0.0.0.0:80",
            "tcp:0.0.0.0:443",
            "tcp:0.0.0.0:8080",
            "udp:0.0.0.0:53",
            "udp:0.0.0.0:123",
            "udp:0.0.0.0:161",
        ],
    )
    try:
        assert connect(a.link.namespace, a.link.address, 22) == "open"  # the listeners are up
        ports = [*range(1, 1025), 8080]
        started = time.monotonic()
        found = scan(world.net.router, a.link.address, ports, timeout=1.0)
        answered = {port: state for port, state in found.items() if state != "no answer"}
        assert not answered, answered
        for port in (53, 123, 161):
            assert udp(world.net.router, a.link.address, port, b"ping") == "no answer", port
        with pytest.raises(OSError):
            in_netns(world.net.router, lambda: icmp_echo(a.link.address, 1.0))
        seconds = time.monotonic() - started
    finally:
        inside.close()
    rows.append(
        (
            "port scan of the terminal",
            "TCP 1–1024, 8080; UDP 53/123/161; ping",
            f"nothing answers (no SYN-ACK, no RST, no ICMP) — {seconds:.0f} s",
        )
    )

    emit(request, "Scenario 4 — attacks", ("attack", "against", "outcome"), rows)


def request_(terminal, method, path, body, ca, key, key_id, headers=None):  # type: ignore[no-untyped-def]
    """A signed request from inside the terminal's namespace (through its firewall)."""
    return send(
        terminal.link.namespace,
        method,
        path,
        body,
        ca_file=ca,
        key=key,
        key_id=key_id,
        headers=headers,
    )


def test_a_stranger_cannot_lock_a_terminal_out(world: World):
    """20 requests with garbage signatures under a victim's id from the LGWAN router; then the
    victim's own request from its municipality's network (failures count per key id and
    client address, server/auth.py)."""
    server = world.server
    token = server.token(ELSEWHERE)
    victim = Ed25519PrivateKey.generate()
    body = json.dumps(
        {
            "token": token,
            "public_key": statement.public_key_to_text(victim.public_key()),
            "agent_version": "victim/1",
        }
    ).encode()
    status, enrolled = send(
        world.net.router,
        "POST",
        "/api/v1/enroll",
        body,
        ca_file=server.ca_file,
        key=victim,
        key_id="enroll",
        headers={"Content-Type": "application/json"},
    )
    assert status == 201, enrolled
    victim_id = enrolled["terminal_id"]
    attacker = Ed25519PrivateKey.generate()
    for _ in range(20):
        status, _answer = send(
            world.net.router,
            "GET",
            "/api/v1/batches",
            ca_file=server.ca_file,
            key=attacker,
            key_id=victim_id,
        )
        assert status in (401, 429)
    status, answer = send(
        world.net.router,
        "GET",
        "/api/v1/batches",
        ca_file=server.ca_file,
        key=victim,
        key_id=victim_id,
    )
    assert status == 429, (status, answer)  # the attacker's own address is locked
    home = world.terminals[world.lasdecs[0]].link.namespace
    status, answer = send(
        home,
        "GET",
        "/api/v1/batches",
        ca_file=server.ca_file,
        key=victim,
        key_id=victim_id,
    )
    assert status == 200, (status, answer)
