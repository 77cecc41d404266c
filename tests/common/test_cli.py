"""renkei-format, run as the installed console script (what a vendor runs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.items import MINISTRY, MUNICIPALITY
from common.noticefile import encode_notice_file
from common.patterns import load_patterns
from common.synthetic import SampleFactory

SCRIPT = shutil.which("renkei-format", path=str(Path(sys.executable).parent)) or "renkei-format"


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SCRIPT, *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, "LANG": "C.UTF-8"},
    )


@pytest.fixture(scope="module")
def day(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("day")
    factory = SampleFactory(seed=3)
    ministry = list(factory.day_of(MINISTRY, "131016", 80))
    municipality = list(factory.day_of(MUNICIPALITY, "011002", 40))
    paths = {
        "ministry": folder / "ministry.csv",
        "municipality": folder / "municipality.csv",
    }
    paths["ministry"].write_bytes(encode_notice_file(MINISTRY, ministry))
    paths["municipality"].write_bytes(encode_notice_file(MUNICIPALITY, municipality))
    bad = list(municipality[:3])
    bad[1] = bad[1].with_values(birth_date="20100230", sex="9")
    paths["bad"] = folder / "bad.csv"
    paths["bad"].write_bytes(encode_notice_file(MUNICIPALITY, bad))
    paths["folder"] = folder
    return paths


def test_every_command_has_help_with_an_example():
    for command in ("validate", "encode", "decode", "lasdec"):
        result = run(command, "--help")
        assert result.returncode == 0
        assert b"Example" in result.stdout, command


def test_validate_valid_files_exit_0(day):
    for name in ("ministry", "municipality"):
        result = run("validate", str(day[name]))
        assert result.returncode == 0, result.stdout.decode()
        assert "問題あり 0 件" in result.stdout.decode()


def test_validate_lists_problems_in_japanese_and_exits_1(day):
    result = run("validate", str(day["bad"]))
    assert result.returncode == 1
    text = result.stdout.decode()
    assert "date.invalid" in text and "code.unknown" in text
    assert "出生の年月日" in text
    assert "問題あり 1 件" in text


def test_validate_json_is_one_object_listing_each_rejected_record(day):
    result = run("validate", "--json", str(day["bad"]))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["records"] == 3 and report["valid"] == 2 and report["invalid"] == 1
    assert report["ok"] is False and report["file_error"] is None
    (rejected,) = report["rejected"]
    assert sorted(p["code"] for p in rejected["problems"]) == ["code.unknown", "date.invalid"]


def test_validate_reports_file_errors_with_exit_1_and_io_errors_with_exit_2(day):
    truncated = day["folder"] / "truncated.csv"
    truncated.write_bytes(day["ministry"].read_bytes()[:-6])
    result = run("validate", "--json", str(truncated))
    assert result.returncode == 1
    assert json.loads(result.stdout)["file_error"]["code"] == "file.truncated"
    assert run("validate", str(day["folder"] / "missing.csv")).returncode == 2
    assert run("validate").returncode == 2


def test_decode_then_encode_gives_the_same_bytes(day, tmp_path):
    jsonl = tmp_path / "day.jsonl"
    assert run("decode", str(day["ministry"]), "-o", str(jsonl)).returncode == 0
    first = json.loads(jsonl.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"format": "renkei-ministry-notice-v1"}
    again = tmp_path / "again.csv"
    result = run("encode", str(jsonl), "-o", str(again))
    assert result.returncode == 0, result.stderr.decode()
    assert again.read_bytes() == day["ministry"].read_bytes()


def test_validate_accepts_unicode_jsonl_too(day, tmp_path):
    jsonl = run("decode", str(day["municipality"])).stdout
    assert run("validate", "-", stdin=jsonl).returncode == 0


def test_encode_refuses_unencodable_text_and_writes_nothing(tmp_path):
    pattern = load_patterns(MUNICIPALITY)["B"]
    record = (
        SampleFactory(seed=1)
        .record(pattern, "131016")
        .with_values(name_alphabet="KIM", name_kind="3", name_kanji="김민준")
    )
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"format": "renkei-municipality-notice-v1"})
        + "\n"
        + json.dumps(record.to_json())
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.csv"
    result = run("encode", str(source), "-o", str(out))
    assert result.returncode == 1
    assert "name_kanji" in result.stderr.decode() and "김" in result.stderr.decode()
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]  # no temporary left behind


def test_lasdec_command():
    result = run("lasdec", "131016", "011002")
    assert result.returncode == 0
    assert "千代田区" in result.stdout.decode() and "札幌市" in result.stdout.decode()
    result = run("lasdec", "--json", "131016", "131017")
    assert result.returncode == 1
    rows = json.loads(result.stdout)
    assert [r["valid"] for r in rows] == [True, False]
    assert rows[1]["problems"] == ["lasdec.check_digit"]
