"""report: a signed statement the terminal's public key verifies, and a Japanese page."""

from __future__ import annotations

import json

import pytest

from appliance.agent.transport import load_private_key
from common import statement
from provisioning import render
from provisioning.apply import under
from tests.provisioning.conftest import invoke


def test_report_is_signed_by_the_terminal_key(enrolled_root, runner, tmp_path):
    out = tmp_path / "report"
    result = invoke(runner, "report", "--root", str(enrolled_root), "--out", str(out))
    assert result.exit_code == 0, result.output
    (json_file,) = out.glob("*.json")
    (html_file,) = out.glob("*.html")
    signed = json.loads(json_file.read_text())
    key = load_private_key(under(enrolled_root, render.KEY_PATH))
    body = statement.verify(signed, key.public_key())
    assert body["lasdec"] == "131016" and body["municipality"] == "東京都千代田区"
    assert body["key_fingerprint"] == statement.key_id(key.public_key())
    names = [c["name"] for c in body["checks"]]
    assert names[:2] == ["link", "gateway"] and "firewall" in names
    assert body["result"] == "fail"  # on the host: no renkei firewall table is loaded
    page = html_file.read_text()
    assert (
        "設置報告書" in page and "東京都千代田区" in page and signed["signature"]["value"] in page
    )
    # A changed report no longer verifies.
    signed["statement"]["lasdec"] = "131024"
    with pytest.raises(statement.StatementError):
        statement.verify(signed, key.public_key())


def test_report_needs_enrollment(tmp_path, runner):
    from tests.provisioning.conftest import base_settings, flags

    invoke(runner, "configure", "--root", str(tmp_path), *flags(base_settings()))
    result = invoke(runner, "report", "--root", str(tmp_path), "--out", str(tmp_path / "r"))
    assert result.exit_code == 1 and "not enrolled" in result.output
