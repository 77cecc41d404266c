"""Configuration: defaults, a TOML file, the environment, overrides — and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import DEFAULT_DATA_DIR, ConfigError, ServerConfig, load_config


def test_defaults_follow_the_data_dir():
    config = load_config(env={})
    assert config.data_dir == DEFAULT_DATA_DIR
    assert config.database_url == f"sqlite:///{DEFAULT_DATA_DIR}/renkei.sqlite3"
    assert config.signing_key_path == DEFAULT_DATA_DIR / "signing-key.pem"
    assert config.clock_window == 300 and config.token_ttl == 72 * 3600
    assert config.tls_cert is None and config.tls_key is None


def test_data_dir_from_a_file_moves_the_derived_paths(tmp_path: Path):
    file = tmp_path / "server.toml"
    file.write_text(f'data_dir = "{tmp_path}/d"\nclock_window = 120\n', encoding="utf-8")
    config = load_config(file, env={})
    assert config.data_dir == tmp_path / "d"
    assert config.database_url == f"sqlite:///{tmp_path}/d/renkei.sqlite3"
    assert config.signing_key_path == tmp_path / "d" / "signing-key.pem"
    assert config.clock_window == 120


def test_a_server_table_is_accepted(tmp_path: Path):
    file = tmp_path / "server.toml"
    file.write_text('[server]\nbind = "0.0.0.0:443"\n', encoding="utf-8")
    assert load_config(file, env={}).bind == "0.0.0.0:443"


def test_precedence_file_then_env_then_overrides(tmp_path: Path):
    file = tmp_path / "server.toml"
    file.write_text("max_records_per_file = 10\ntoken_ttl = 60\nfailed_auth_limit = 5\n")
    env = {
        "RENKEI_SERVER_CONFIG": str(file),
        "RENKEI_SERVER_TOKEN_TTL": "120",
        "RENKEI_SERVER_FAILED_AUTH_LIMIT": "7",
    }
    config = load_config(env=env, failed_auth_limit=9)
    assert config.max_records_per_file == 10  # file
    assert config.token_ttl == 120  # environment over file
    assert config.failed_auth_limit == 9  # override over environment


def test_explicit_database_url_is_kept(tmp_path: Path):
    url = "postgresql+psycopg://renkei@db/renkei"
    config = load_config(env={"RENKEI_SERVER_DATABASE_URL": url}, data_dir=tmp_path)
    assert config.database_url == url


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ({"file": "clock_windw = 3\n"}, "clock_windw"),
        ({"env": {"RENKEI_SERVER_COLOR": "blue"}}, "color"),
        ({"file": 'clock_window = "soon"\n'}, "clock_window"),
        ({"env": {"RENKEI_SERVER_MAX_UPLOAD_BYTES": "lots"}}, "max_upload_bytes"),
        ({"file": "token_ttl = -5\n"}, "token_ttl"),
        ({"file": "token_ttl = true\n"}, "token_ttl"),
        ({"file": "bind = 8443\n"}, "bind"),
        ({"file": 'bind = "localhost"\n'}, "bind"),
        ({"file": "data_dir = 3\n"}, "data_dir"),
        ({"env": {"RENKEI_SERVER_FAILED_AUTH_PERIOD": "86400"}}, "failed_auth_period"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, source: dict, key: str):
    file = None
    if "file" in source:
        file = tmp_path / "server.toml"
        file.write_text(source["file"], encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(file, env=source.get("env", {}))
    assert key in caught.value.message


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("data_dir = [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def test_tls_cert_and_key_go_together(tmp_path: Path):
    with pytest.raises(ConfigError, match="together"):
        load_config(env={}, data_dir=tmp_path, tls_cert=tmp_path / "c.pem")
    config = load_config(env={}, data_dir=tmp_path, tls_cert="c.pem", tls_key="k.pem")
    assert (config.tls_cert, config.tls_key) == (Path("c.pem"), Path("k.pem"))


def test_dev_tls_files_are_found_in_the_data_dir(tmp_path: Path):
    assert load_config(env={}, data_dir=tmp_path).tls_cert is None
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "server.crt").write_text("cert")
    (tmp_path / "tls" / "server.key").write_text("key")
    config = load_config(env={}, data_dir=tmp_path)
    assert config.tls_cert == tmp_path / "tls" / "server.crt"
    assert config.tls_key == tmp_path / "tls" / "server.key"


def test_config_is_frozen(tmp_path: Path):
    config = load_config(env={}, data_dir=tmp_path)
    assert isinstance(config, ServerConfig)
    with pytest.raises(AttributeError):
        config.bind = "x"  # type: ignore[misc]


# --- authorities: the names a signed request may address (issue #18) -------------------------------


def test_authorities_from_a_file_the_environment_and_overrides(tmp_path: Path):
    path = tmp_path / "server.toml"
    path.write_text('authorities = ["Renkei.Example", "renkei.example:443", "[0:0::1]:08443"]\n')
    assert load_config(path, env={}).authorities == ("renkei.example", "[::1]:8443")
    env = {"RENKEI_SERVER_AUTHORITIES": "lb.example, renkei.example:8443"}
    assert load_config(env=env).authorities == ("lb.example", "renkei.example:8443")
    assert load_config(env={}, authorities=["x.example:9443"]).authorities == ("x.example:9443",)
    assert load_config(env={}).authorities == ()  # default: derived (server.authorities)


@pytest.mark.parametrize(
    "value",
    ["https://renkei.example", "renkei.example:0", "renkei.example:70000", "::1", "[zz]:1", "a b"],
)
def test_a_bad_authority_names_the_key(value: str):
    with pytest.raises(ConfigError, match="authorities"):
        load_config(env={"RENKEI_SERVER_AUTHORITIES": value})
    with pytest.raises(ConfigError, match="authorities"):
        load_config(env={}, authorities=[value])
