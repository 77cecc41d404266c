"""check against real dnsmasq, chronyd and gunicorn; the firewall compared inside a namespace.

The services run on 127.0.0.1 (the agent tests' fixtures), so the LGWAN port
here is ``lo`` (127.0.0.1/8, "gateway" 127.0.0.2); the commands the checks run
(``ip``, ``nft``, ``chronyc``) run inside the test's namespace, where the
rendered ruleset is loaded.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from provisioning import checks, render
from provisioning.apply import read_enrollment
from provisioning.cli import load_saved_settings
from server.enrollment import revoke_terminal
from tests.provisioning.conftest import base_settings, flags, invoke


def in_namespace(namespace: str):  # type: ignore[no-untyped-def]
    def run(argv):  # type: ignore[no-untyped-def]
        return subprocess.run(
            ["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True, timeout=20
        )

    return run


def context(root: Path, lgwan, **settings_override) -> checks.Context:  # type: ignore[no-untyped-def]
    settings = load_saved_settings(root)
    if settings_override:
        from dataclasses import replace

        settings = replace(settings, **settings_override)
    return checks.Context(
        settings, read_enrollment(root), root=root, run=in_namespace(lgwan.terminal)
    )


def by_name(results) -> dict[str, checks.Check]:  # type: ignore[no-untyped-def]
    return {c.name: c for c in results}


def test_all_pass_against_real_services(enrolled_root, lgwan):
    ctx = context(enrolled_root, lgwan)
    lgwan.exec_t("nft", "-f", str(enrolled_root / render.NFTABLES_CONF.lstrip("/")))
    results = by_name(checks.run_checks(ctx))
    failing = {n: (c.status, c.detail) for n, c in results.items() if c.status != "pass"}
    # chronyd is not running as the appliance's clock service here, and systemd does not run.
    assert set(failing) == {"chrony", "timer"}, failing
    assert all(c.status == "warn" for n, c in results.items() if n in failing)
    assert results["signed request"].status == "pass"
    assert [n for n in results if n.startswith(("dns ", "ntp "))] == [
        f"dns {ctx.settings.dns_servers[0]}",
        f"ntp {ctx.settings.ntp_servers[0]}",
    ]
    assert checks.summary_exit_code(list(results.values())) == 2


def test_dns_down_fails_with_hint(enrolled_root, lgwan):
    from provisioning.settings import parse_endpoint
    from tests.agent.conftest import free_port

    dead = parse_endpoint("dns_servers", f"127.0.0.1:{free_port()}", 53)
    ctx = context(enrolled_root, lgwan, dns_servers=(dead,))
    (result,) = checks.check_dns_servers(ctx)
    assert result.status == "fail" and "応答がありません" in result.hint


def test_revoked_terminal_is_refused(enrolled_root, lgwan, agent_server):
    ctx = context(enrolled_root, lgwan)
    assert revoke_terminal(agent_server.storage, ctx.enrollment.terminal_id, now=datetime.now(UTC))
    results = by_name(checks.check_server(ctx))
    assert results["tls"].status == "pass"
    assert results["signed request"].status == "fail"
    assert (
        "auth.revoked" in results["signed request"].detail
        and "失効" in results["signed request"].hint
    )


def test_firewall_missing_or_different(enrolled_root, lgwan, tmp_path):
    ctx = context(enrolled_root, lgwan)
    assert checks.check_firewall(ctx).status == "fail"  # nothing loaded yet
    other = render.render_nftables(load_saved_settings(enrolled_root)).replace(
        "ct state invalid drop", "ct state invalid drop\n\t\tip daddr 10.9.9.9 tcp dport 22 accept"
    )
    (tmp_path / "other.nft").write_text(other)
    lgwan.exec_t("nft", "-f", str(tmp_path / "other.nft"))
    result = checks.check_firewall(ctx)
    assert result.status == "fail" and "differs" in result.detail
    lgwan.exec_t("nft", "-f", str(enrolled_root / render.NFTABLES_CONF.lstrip("/")))
    assert checks.check_firewall(ctx).status == "pass"


def test_not_enrolled(tmp_path, runner, lgwan):
    invoke(runner, "configure", "--root", str(tmp_path), *flags(base_settings()))
    results = checks.check_server(context(tmp_path, lgwan))
    assert {c.status for c in results} == {"fail"} and "enroll" in results[0].hint


def test_cli_json_and_exit_code(enrolled_root, runner):
    import json

    result = invoke(runner, "check", "--root", str(enrolled_root), "--json")
    data = json.loads(result.output)
    assert result.exit_code == 1  # on the host: no renkei table loaded
    assert {"name", "status", "detail", "hint"} <= set(data[0])
    assert next(c for c in data if c["name"] == "firewall")["status"] == "fail"
