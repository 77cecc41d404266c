"""enroll against the real server under gunicorn: good token, used token, wrong token, wrong town."""

from __future__ import annotations

import os
import stat
import tomllib
from datetime import UTC, datetime

import pytest

from appliance.agent.config import load_config
from appliance.agent.transport import load_private_key
from common import statement
from provisioning import render
from provisioning.apply import under
from server.enrollment import issue_token
from tests.provisioning.conftest import base_settings, flags, invoke
from tests.server.conftest import API_A, API_B


def token_for(server, lasdec=API_A) -> str:  # type: ignore[no-untyped-def]
    return issue_token(server.storage, lasdec, now=datetime.now(UTC), ttl=3600)


@pytest.fixture
def configured(tmp_path, runner, agent_server, lgwan_dns):  # type: ignore[no-untyped-def]
    data = base_settings(
        server_url=agent_server.url, server_address="127.0.0.1/32", dns_servers=[lgwan_dns.address]
    )
    assert invoke(runner, "configure", "--root", str(tmp_path), *flags(data)).exit_code == 0
    return tmp_path


def enroll(runner, root, token, server, *extra):  # type: ignore[no-untyped-def]
    return invoke(
        runner,
        "enroll",
        "--root",
        str(root),
        "--token",
        token,
        "--ca-file",
        str(server.ca_file),
        *extra,
    )


def test_enroll_writes_key_and_pinned_config(configured, runner, agent_server):
    token = token_for(agent_server)
    result = enroll(runner, configured, token, agent_server)
    assert result.exit_code == 0, result.output
    key_file = under(configured, render.KEY_PATH)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    key = load_private_key(key_file)
    assert key_file.read_text() not in result.output and "PRIVATE" not in result.output
    assert statement.key_id(key.public_key()) in result.output
    agent = tomllib.loads(under(configured, render.AGENT_TOML).read_text())
    assert agent["server_key"] == statement.public_key_to_text(agent_server.server_key.public_key())
    assert agent["terminal_id"] in result.output and agent["lasdec"] == API_A
    assert under(configured, render.CA_PATH).read_bytes() == agent_server.ca_file.read_bytes()
    # The agent accepts the file once its paths point into the test root.
    text = under(configured, render.AGENT_TOML).read_text()
    text = text.replace('"/var/', f'"{configured}/var/').replace('"/etc/', f'"{configured}/etc/')
    (configured / "agent.toml").write_text(text)
    config = load_config(configured / "agent.toml", env={})
    # The enrolled key works: a signed request is accepted.
    from tests.agent.conftest import Enrolled

    with agent_server.transport(Enrolled(config.terminal_id, key, API_A)) as transport:
        assert isinstance(transport.list_batches(), list)
    # The same token again (with --force) is refused as used; nothing changes.
    before = under(configured, render.AGENT_TOML).read_bytes()
    again = enroll(runner, configured, token, agent_server, "--force")
    assert again.exit_code == 1 and "token.used" in again.output and "使用済み" in again.output
    assert under(configured, render.AGENT_TOML).read_bytes() == before
    refused = enroll(runner, configured, token_for(agent_server), agent_server)
    assert refused.exit_code == 1 and "already enrolled" in refused.output


@pytest.mark.parametrize(
    ("token", "code"), [("AAAAA-BBBBB-CCCCC-DDDDD", "token.invalid"), ("x", "token.invalid")]
)
def test_wrong_token_writes_nothing(configured, runner, agent_server, token, code):
    result = enroll(runner, configured, token, agent_server)
    assert result.exit_code == 1 and code in result.output
    assert not under(configured, render.AGENT_TOML).exists()
    assert not under(configured, render.KEY_PATH).exists()


def test_token_of_another_municipality_is_refused(configured, runner, agent_server):
    result = enroll(runner, configured, token_for(agent_server, API_B), agent_server)
    assert result.exit_code == 1 and "enroll.lasdec" in result.output
    assert not under(configured, render.AGENT_TOML).exists()


def test_untrusted_certificate(configured, runner, agent_server, tmp_path_factory):
    from server.tls import make_dev_ca

    other_ca, _ = make_dev_ca(tmp_path_factory.mktemp("other-ca"))
    result = invoke(
        runner,
        "enroll",
        "--root",
        str(configured),
        "--token",
        token_for(agent_server),
        "--ca-file",
        str(other_ca),
    )
    assert result.exit_code == 1 and "net.tls" in result.output
    assert not under(configured, render.KEY_PATH).exists()
