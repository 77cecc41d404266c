"""The agent's configuration: a valid file loads; every bad value names its key."""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.agent.config import (
    DEFAULT_PATH,
    ENV_CONFIG,
    AgentConfig,
    CardConfig,
    ConfigError,
    RetryPolicy,
    SmtpConfig,
    load_card_config,
    load_config,
)
from common import statement

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "appliance" / "rootfs" / "etc" / "renkei" / "agent.toml.example"
SERVER_KEY = statement.public_key_to_text(Ed25519PrivateKey.generate().public_key())
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_FIXED_KEY = statement.public_key_to_text(
    Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
)
#: The same 32 bytes as _FIXED_KEY in other base64: the last digit's two low bits are unused.
OTHER_TEXT = _FIXED_KEY[:42] + _B64[_B64.index(_FIXED_KEY[42]) ^ 1] + "="


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dt.time):
        return value.isoformat()
    raise TypeError(value)


def to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for these tests: scalars and lists at the top, then [tables]."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if isinstance(table, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def base(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "terminal-key.pem").write_bytes(b"key")
    (tmp_path / "ca.pem").write_bytes(b"ca")
    (tmp_path / "smtp-password").write_bytes(b"secret")
    return {
        "server_url": "https://renkei.example.lg.jp:8443",
        "lasdec": "131016",
        "terminal_id": "t_0123456789abcdef",
        "key_path": str(tmp_path / "terminal-key.pem"),
        "server_key": SERVER_KEY,
    }


def write(tmp_path: Path, data: dict[str, Any], name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def test_minimal_file_gets_the_defaults(tmp_path: Path, base: dict[str, Any]) -> None:
    config = load_config(write(tmp_path, base), env={})
    assert config == AgentConfig(
        server_url="https://renkei.example.lg.jp:8443",
        lasdec="131016",
        terminal_id="t_0123456789abcdef",
        key_path=tmp_path / "terminal-key.pem",
        server_key=SERVER_KEY,
        ca_file=None,
    )
    assert config.retry == RetryPolicy(base=30.0, cap=3600.0, jitter=0.5, give_up_after=43200)
    assert config.smtp is None
    assert config.folder_root == Path("/srv/renkei")
    assert config.queue_path == Path("/var/lib/renkei/queue.sqlite3")


def test_every_key_is_read(tmp_path: Path, base: dict[str, Any]) -> None:
    data = base | {
        "ca_file": "ca.pem",  # relative: next to the configuration file
        "folder_root": str(tmp_path / "srv"),
        "state_dir": "state",
        "dns_servers": ["10.1.2.3", "10.1.2.4:5353", "[fd00::1]:53", "fd00::2"],
        "ntp_servers": ["10.1.2.5", "ntp.example.lg.jp:123"],
        "clock_warn": 2,
        "clock_refuse": 30.5,
        "business_end": "18:00",
        "max_file_bytes": 1000,
        "settle_seconds": 0,
        "retry": {"base": 10, "cap": 600, "jitter": 0.25, "give_up_after": 0},
        "smtp": {
            "host": "smtp.example.lg.jp",
            "port": 587,
            "starttls": True,
            "username": "agent",
            "password_file": "smtp-password",
            "sender": "agent@city.example.lg.jp",
            "recipients": ["a@city.example.lg.jp", "b@city.example.lg.jp"],
        },
    }
    config = load_config(write(tmp_path, data), env={})
    assert config.ca_file == tmp_path / "ca.pem"
    assert config.state_dir == tmp_path / "state"
    assert config.dns_servers == ("10.1.2.3", "10.1.2.4:5353", "[fd00::1]:53", "fd00::2")
    assert config.ntp_servers == ("10.1.2.5", "ntp.example.lg.jp:123")
    assert (config.clock_warn, config.clock_refuse) == (2.0, 30.5)
    assert config.business_end == "18:00"
    assert (config.max_file_bytes, config.settle_seconds) == (1000, 0.0)
    assert config.retry == RetryPolicy(10.0, 600.0, 0.25, 0.0)
    assert config.smtp == SmtpConfig(
        host="smtp.example.lg.jp",
        port=587,
        starttls=True,
        username="agent",
        password_file=tmp_path / "smtp-password",
        sender="agent@city.example.lg.jp",
        recipients=("a@city.example.lg.jp", "b@city.example.lg.jp"),
    )


def test_the_example_file_is_valid_and_lists_every_key(tmp_path: Path) -> None:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    (tmp_path / "key.pem").write_bytes(b"key")
    data["key_path"] = str(tmp_path / "key.pem")
    config = load_config(write(tmp_path, data), env={})
    assert config.lasdec == "131016"
    assert config.smtp is not None
    text = EXAMPLE.read_text(encoding="utf-8")
    # every field appears in the example, set or commented out
    for name in AgentConfig.__dataclass_fields__:
        assert any(f"\n{form}" in text for form in (f"{name} = ", f"# {name} = ", f"[{name}]")), (
            name
        )
    for cls in (RetryPolicy, SmtpConfig):
        for name in cls.__dataclass_fields__:
            assert f"\n{name} = " in text or f"\n# {name} = " in text, name


def test_business_end_as_a_toml_time(tmp_path: Path, base: dict[str, Any]) -> None:
    config = load_config(write(tmp_path, base | {"business_end": dt.time(17, 30)}), env={})
    assert config.business_end == "17:30"


def test_the_url_is_normalised(tmp_path: Path, base: dict[str, Any]) -> None:
    config = load_config(write(tmp_path, base | {"server_url": "HTTPS://Renkei.Example/"}), env={})
    assert config.server_url == "https://renkei.example"


def test_path_argument_then_environment_then_default(tmp_path: Path, base: dict[str, Any]) -> None:
    first = write(tmp_path, base | {"terminal_id": "t_first"}, "first.toml")
    second = write(tmp_path, base | {"terminal_id": "t_second"}, "second.toml")
    env = {ENV_CONFIG: str(second)}
    assert load_config(first, env=env).terminal_id == "t_first"
    assert load_config(env=env).terminal_id == "t_second"
    if DEFAULT_PATH.exists():
        pytest.skip(f"{DEFAULT_PATH} exists on this machine")
    with pytest.raises(ConfigError) as caught:
        load_config(env={})
    assert caught.value.code == "config.missing"
    assert str(DEFAULT_PATH) in caught.value.message


def test_environment_is_os_environ_by_default(
    tmp_path: Path, base: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_CONFIG, str(write(tmp_path, base)))
    assert load_config().lasdec == "131016"


@pytest.mark.parametrize(
    ("text", "code", "fragment"),
    [
        (None, "config.missing", "does not exist"),
        ("lasdec = \n", "config.invalid", "not valid TOML"),
        (b"\xff\xfe", "config.invalid", "not valid TOML"),
    ],
)
def test_unreadable_files(
    tmp_path: Path, text: str | bytes | None, code: str, fragment: str
) -> None:
    path = tmp_path / "agent.toml"
    if isinstance(text, str):
        path.write_text(text)
    elif isinstance(text, bytes):
        path.write_bytes(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.code == code
    assert fragment in caught.value.message
    assert str(path) in caught.value.message
    assert caught.value.key is None


# (key to change, new value or DELETE, key named in the error, words in the message)
DELETE = object()
BAD = [
    ("server_url", "http://renkei.example", "server_url", "https"),
    ("server_url", "ftp://renkei.example", "server_url", "https"),
    ("server_url", "renkei.example", "server_url", "https"),
    ("server_url", "https://", "server_url", "no host"),
    ("server_url", "https://user:pw@renkei.example", "server_url", "no user name"),
    ("server_url", "https://renkei.example/?x=1", "server_url", "no query"),
    ("server_url", "https://renkei.example:99999", "server_url", "not a valid URL"),
    ("server_url", "https://bad_host!.example", "server_url", "not a valid host name"),
    ("server_url", DELETE, "server_url", "missing"),
    ("lasdec", "131017", "lasdec", "check digit"),
    ("lasdec", "999997", "lasdec", "names no municipality"),
    ("lasdec", "13101", "lasdec", "six ASCII digits"),
    ("lasdec", "１３１０１６", "lasdec", "six ASCII digits"),
    ("lasdec", 131016, "lasdec", "in quotes"),
    ("lasdec", "130001", "lasdec", "prefecture"),
    ("terminal_id", "", "terminal_id", "empty"),
    ("terminal_id", "t 1", "terminal_id", "enrollment"),
    ("key_path", "missing.pem", "key_path", "no such file"),
    ("key_path", ".", "key_path", "not a regular file"),
    ("key_path", DELETE, "key_path", "missing"),
    ("key_path", 5, "key_path", "text"),
    ("server_key", "not base64!", "server_key", "server's public key"),
    ("server_key", "AAAA", "server_key", "32"),
    ("server_key", "AQ" + "A" * 41 + "=", "server_key", "small order"),  # the identity point
    ("server_key", "7v" + "/" * 39 + "38=", "server_key", "canonical"),  # identity, y + p
    ("server_key", OTHER_TEXT, "server_key", "canonical"),
    ("ca_file", "nope.pem", "ca_file", "no such file"),
    ("dns_servers", ["dns.example"], "dns_servers", "IP address"),
    ("dns_servers", ["10.1.2.3:0"], "dns_servers", "between 1 and 65535"),
    ("dns_servers", ["10.1.2.3:x"], "dns_servers", "not a number"),
    ("dns_servers", ["10.1.2.300"], "dns_servers", "IP address"),
    ("dns_servers", ["10.1.2.3", "10.1.2.3"], "dns_servers", "twice"),
    ("dns_servers", 5, "dns_servers", "list"),
    ("dns_servers", ["[fd00::1"], "dns_servers", "']'"),
    ("ntp_servers", ["bad host"], "ntp_servers", "not an IP address or host name"),
    ("ntp_servers", ["ntp.example:70000"], "ntp_servers", "between 1 and 65535"),
    ("clock_warn", 0, "clock_warn", "greater than 0"),
    ("clock_warn", -1, "clock_warn", "negative"),
    ("clock_warn", "1", "clock_warn", "number"),
    ("clock_refuse", 0.5, "clock_refuse", "at least clock_warn"),
    ("clock_refuse", 1.0, "clock_refuse", "at least clock_warn"),  # equal to the default warn
    ("business_end", "25:00", "business_end", "time of day"),
    ("business_end", "17:60", "business_end", "time of day"),
    ("business_end", "5pm", "business_end", "HH:MM"),
    ("business_end", "7:15", "business_end", "HH:MM"),
    ("business_end", dt.time(17, 15, 30), "business_end", "hours and minutes"),
    ("max_file_bytes", 0, "max_file_bytes", "between"),
    ("max_file_bytes", 1.5, "max_file_bytes", "whole number"),
    ("max_file_bytes", True, "max_file_bytes", "whole number"),
    ("settle_seconds", -5, "settle_seconds", "negative"),
    ("state_dir", "/srv/renkei/state", "state_dir", "must not contain each other"),
    ("retry", {"base": -1}, "retry.base", "negative"),
    ("retry", {"base": 0}, "retry.base", "greater than 0"),
    ("retry", {"cap": -30}, "retry.cap", "negative"),
    ("retry", {"cap": 10}, "retry.cap", "at least retry.base"),
    ("retry", {"jitter": -0.1}, "retry.jitter", "negative"),
    ("retry", {"jitter": 1.5}, "retry.jitter", "between 0 and 1"),
    ("retry", {"give_up_after": -1}, "retry.give_up_after", "negative"),
    ("retry", {"bsae": 10}, "retry.bsae", "did you mean 'retry.base'"),
    ("retry", 5, "retry", "table"),
    ("smtp", {"port": 25}, "smtp.host", "missing"),
    ("smtp", {"host": "smtp.example", "port": 0}, "smtp.port", "between 1 and 65535"),
    ("smtp", {"host": "smtp.example", "starttls": "yes"}, "smtp.starttls", "true or false"),
    ("smtp", {"host": "smtp.example", "username": "u"}, "smtp.password_file", "go together"),
    ("smtp", {"host": "smtp.example", "recipients": ["nobody"]}, "smtp.recipients", "mail address"),
    ("smtp", {"host": "smtp.example", "sender": "a b@c"}, "smtp.sender", "mail address"),
    ("smtp", {"host": "smtp.example:25"}, "smtp.host", "smtp.port"),
    ("smtp", {"host": "smtp.example", "password_file": "none"}, "smtp.password_file", "no such"),
    ("serverurl", "https://x", "serverurl", "did you mean 'server_url'"),
    ("lasdec_code", "131016", "lasdec_code", "unknown key"),
    ("clock_warn", float("nan"), "clock_warn", "finite"),
]


@pytest.mark.parametrize(("key", "value", "named", "fragment"), BAD)
def test_bad_values_name_the_key(
    tmp_path: Path, base: dict[str, Any], key: str, value: Any, named: str, fragment: str
) -> None:
    data = dict(base)
    if key == "state_dir":
        data["folder_root"] = "/srv/renkei"
    if value is DELETE:
        del data[key]
    else:
        data[key] = value
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    error = caught.value
    assert error.key == named
    assert error.code == "config.invalid"
    assert error.message.startswith(f"{path}: {named}: "), error.message
    assert fragment in error.message, error.message
    assert isinstance(error, ValueError)


# --- [card] --------------------------------------------------------------------------------------


def _card_file(tmp_path: Path, base: dict[str, Any], card: dict[str, Any]) -> Path:
    return write(tmp_path, base | {"card": card})


def test_card_defaults_without_the_table(tmp_path: Path, base: dict[str, Any]) -> None:
    config = load_config(write(tmp_path, base), env={})
    assert config.card == CardConfig()
    assert (config.card.reader, config.card.key_provider) == (None, "none")


def test_card_keys_are_read(tmp_path: Path, base: dict[str, Any]) -> None:
    (tmp_path / "anchors.pem").write_bytes(b"pem")
    (tmp_path / "test.key").write_bytes(b"key")
    path = _card_file(
        tmp_path,
        base,
        {
            "reader": "Virtual PCD 00 00",
            "trust_anchor_file": "anchors.pem",
            "key_provider": "test",
            "test_key_file": "test.key",
        },
    )
    assert load_config(path, env={}).card == CardConfig(
        reader="Virtual PCD 00 00",
        trust_anchor_file=tmp_path / "anchors.pem",
        key_provider="test",
        test_key_file=tmp_path / "test.key",
    )
    (tmp_path / "vendor.so").write_bytes(b"so")
    hsm = {
        "key_provider": "pkcs11",
        "pkcs11_module": "vendor.so",
        "pkcs11_slot": 2,
        "pkcs11_key_label": "addr",
    }
    card = load_config(_card_file(tmp_path, base, hsm), env={}).card
    assert (card.pkcs11_module, card.pkcs11_slot, card.pkcs11_key_label) == (
        tmp_path / "vendor.so",
        2,
        "addr",
    )
    sam = {"key_provider": "sam", "sam_reader": "SAM 00 00"}
    assert load_config(_card_file(tmp_path, base, sam), env={}).card.sam_reader == "SAM 00 00"


@pytest.mark.parametrize(
    ("card", "named", "fragment"),
    [
        ({"readr": "x"}, "card.readr", "did you mean 'card.reader'"),
        ({"key_provider": "hsm"}, "card.key_provider", "'pkcs11'"),
        ({"key_provider": "test"}, "card.test_key_file", 'key_provider = "test" needs it'),
        ({"test_key_file": "missing.key"}, "card.test_key_file", "no such file"),
        ({"key_provider": "sam"}, "card.sam_reader", "needs it"),
        ({"sam_reader": "SAM 00 00"}, "card.sam_reader", 'not used with key_provider = "none"'),
        (
            {"key_provider": "pkcs11", "pkcs11_slot": -1},
            "card.pkcs11_slot",
            "between 0",
        ),
        ({"trust_anchor_file": "nowhere.pem"}, "card.trust_anchor_file", "no such file"),
        ({"reader": ""}, "card.reader", "must not be empty"),
    ],
)
def test_bad_card_values_name_the_key(
    tmp_path: Path, base: dict[str, Any], card: dict[str, Any], named: str, fragment: str
) -> None:
    path = _card_file(tmp_path, base, card)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.key == named
    assert fragment in caught.value.message, caught.value.message
    with pytest.raises(ConfigError):  # the card commands read the same table the same way
        load_card_config(path, env={})


def test_card_config_alone_without_server_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "test.key").write_bytes(b"key")
    path = write(tmp_path, {"card": {"key_provider": "test", "test_key_file": "test.key"}})
    assert load_card_config(path, env={}).test_key_file == tmp_path / "test.key"
    with pytest.raises(ConfigError):  # the agent itself still needs its server settings
        load_config(path, env={})
    monkeypatch.setattr("appliance.agent.config.DEFAULT_PATH", tmp_path / "absent.toml")
    assert load_card_config(env={}) == CardConfig()  # no file at the default place: defaults
    with pytest.raises(ConfigError) as caught:  # a file named explicitly must exist
        load_card_config(tmp_path / "absent.toml", env={})
    assert caught.value.code == "config.missing"
    with pytest.raises(ConfigError):
        load_card_config(env={ENV_CONFIG: str(tmp_path / "absent.toml")})


def test_the_example_lists_every_card_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    card_block = text[text.index("\n[card]\n") :]
    for name in CardConfig.__dataclass_fields__:
        assert f"\n{name} = " in card_block or f"\n# {name} = " in card_block, name
