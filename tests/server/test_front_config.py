"""The front's configuration: rendered from the server's, checked by nginx itself, refused clearly.

Rendering is pure (server.front.nginx_config); each rendered variant is then handed to the
real nginx (``nginx -t``), which is the judge of whether it is a configuration at all.  The
behaviour of the running front is tests/server/test_front.py.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from server.api import JSON_BODY_LIMIT
from server.auth import ACCEPT_SIGNATURE
from server.cli import main
from server.config import ConfigError, load_config
from server.front import TLS12_CIPHERS, nginx_config, prepare_front, prepare_run_dir
from server.tls import make_dev_ca, make_server_cert

NGINX = Path("/usr/sbin/nginx")


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    ca_cert, ca_key = make_dev_ca(tmp_path / "tls")
    return make_server_cert(tmp_path / "tls", ca_cert, ca_key)


def _config(tmp_path: Path, tls: tuple[Path, Path], **overrides):
    return load_config(
        env={},
        data_dir=tmp_path / "data",
        run_dir=tmp_path / "run",
        tls_cert=tls[0],
        tls_key=tls[1],
        **overrides,
    )


def _render(config) -> str:
    return nginx_config(
        config,
        upload_path="/api/v1/uploads",
        json_body_limit=JSON_BODY_LIMIT,
        accept_signature=ACCEPT_SIGNATURE,
        root_user="root" if os.geteuid() == 0 else None,
    )


def _nginx_accepts(config) -> None:
    conf = prepare_front(config)
    result = subprocess.run(
        [str(NGINX), "-t", "-c", str(conf), "-p", str(config.run_dir), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_defaults_render_to_a_configuration_nginx_accepts(tmp_path, tls):
    config = _config(tmp_path, tls, bind="127.0.0.1:18443", front={"access_log": "off"})
    text = _render(config)
    assert "listen 127.0.0.1:18443 ssl;" in text
    assert f'server "unix:{tmp_path}/run/app.sock";' in text
    assert f"client_max_body_size {config.max_upload_bytes};" in text
    assert f"client_max_body_size {JSON_BODY_LIMIT};" in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert f"ssl_ciphers {':'.join(TLS12_CIPHERS)};" in text
    assert "client_header_timeout 10s;" in text and "limit_conn per_address 32;" in text
    assert "set_real_ip_from" not in text  # the TCP peer is the client unless told otherwise
    assert not re.search(r"@[A-Z0-9_]+@", text)  # every placeholder filled
    _nginx_accepts(config)


def test_every_setting_reaches_nginx_and_nginx_accepts_it(tmp_path, tls):
    config = _config(
        tmp_path,
        tls,
        bind="[::1]:9443",
        max_upload_bytes=5_000_000,
        front={
            "workers": 3,
            "worker_connections": 1000,
            "header_timeout": 4,
            "body_timeout": 6,
            "send_timeout": 7,
            "keepalive_timeout": 8,
            "connections_per_address": 9,
            "trusted_proxies": ["10.0.0.0/8", "192.0.2.7"],
            "access_log": str(tmp_path / "access.log"),
        },
    )
    text = _render(config)
    for line in (
        "listen [::1]:9443 ssl;",
        "worker_processes 3;",
        "worker_connections 1000;",
        "client_header_timeout 4s;",
        "client_body_timeout 6s;",
        "send_timeout 7s;",
        "keepalive_timeout 8s;",
        "limit_conn per_address 9;",
        "client_max_body_size 5000000;",
        "set_real_ip_from 10.0.0.0/8;",
        "set_real_ip_from 192.0.2.7;",
        "real_ip_header X-Forwarded-For;",
        f'access_log "{tmp_path}/access.log" renkei;',
    ):
        assert line in text, line
    _nginx_accepts(config)


def test_syslog_access_log_is_accepted(tmp_path, tls):
    config = _config(tmp_path, tls, front={"access_log": "syslog"})
    assert "access_log syslog:server=unix:/dev/log,tag=renkei_front,nohostname renkei;" in (
        _render(config)
    )
    _nginx_accepts(config)


def test_the_front_serves_https_only(tmp_path):
    config = load_config(env={}, data_dir=tmp_path, run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="HTTPS only"):
        _render(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"front": {"access_log": "relative.log"}}, "front.access_log"),
        ({"front": {"access_log": "/var/log/x$y.log"}}, "front.access_log"),
        ({"front": {"access_log": '/var/log/x";y.log'}}, "front.access_log"),
    ],
)
def test_values_nginx_would_misread_are_refused(tmp_path, tls, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _render(_config(tmp_path, tls, **overrides))


def test_a_certificate_path_with_a_quote_is_refused(tmp_path, tls):
    odd = tmp_path / 'we"ird.crt'
    odd.write_bytes(tls[0].read_bytes())
    with pytest.raises(ConfigError, match="tls_cert"):
        _render(_config(tmp_path, (odd, tls[1])))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RENKEI_SERVER_BIND": "unix:/run/x.sock"}, "bind must be ADDRESS:PORT"),
        ({"RENKEI_SERVER_BIND": "renkei.example:443"}, "bind must be ADDRESS:PORT"),
        ({"RENKEI_SERVER_BIND": "127.0.0.1:0"}, "bind must be ADDRESS:PORT"),
        ({"RENKEI_SERVER_BIND": "300.0.0.1:443"}, "is not an IP address"),
        ({"RENKEI_SERVER_RUN_DIR": "/tmp/" + "x" * 120}, "too long for a socket path"),
        ({"RENKEI_SERVER_FRONT_TRUSTED_PROXIES": "10.0.0.0/8,lb.example"}, "front.trusted_proxies"),
        ({"RENKEI_SERVER_FRONT_HEADER_TIMEOUT": "0"}, "front.header_timeout"),
    ],
)
def test_bad_front_settings_name_the_key(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_the_run_folder_is_made_private_and_a_shared_one_is_refused(tmp_path, tls):
    config = _config(tmp_path, tls)
    run_dir = prepare_run_dir(config)
    assert run_dir.stat().st_mode & 0o777 == 0o700
    run_dir.chmod(0o755)
    with pytest.raises(ConfigError, match="must belong to this user and be private"):
        prepare_run_dir(config)


def test_front_print_shows_what_would_run_and_writes_nothing(tmp_path, tls):
    env = {
        "RENKEI_SERVER_DATA_DIR": str(tmp_path / "data"),
        "RENKEI_SERVER_RUN_DIR": str(tmp_path / "run"),
        "RENKEI_SERVER_TLS_CERT": str(tls[0]),
        "RENKEI_SERVER_TLS_KEY": str(tls[1]),
    }
    result = CliRunner().invoke(main, ["front", "--print"], env=env)
    assert result.exit_code == 0, result.output
    assert "listen 127.0.0.1:8443 ssl;" in result.output
    assert not (tmp_path / "run").exists()


def test_front_without_a_certificate_says_so(tmp_path):
    env = {
        "RENKEI_SERVER_DATA_DIR": str(tmp_path / "data"),
        "RENKEI_SERVER_RUN_DIR": str(tmp_path / "run"),
    }
    result = CliRunner().invoke(main, ["front"], env=env)
    assert result.exit_code != 0
    assert "HTTPS only" in result.output
