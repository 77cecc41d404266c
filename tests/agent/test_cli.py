"""``renkei-agent sync`` and ``renkei-agent status`` with a real agent.toml, server, DNS and NTP.

The commands run in-process (click's runner); the crash test runs the same
command as a subprocess.  The configuration points at the module's server
by name (``renkei.test``), resolved through dnsmasq, and at chronyd for the
clock, exactly as on an appliance.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.agent.cli import main, next_scheduled_run
from appliance.agent.queue import Queue
from tests.agent.helpers import Site, notice_file
from tests.server.conftest import API_A, API_B, API_C

pytestmark = pytest.mark.slow


@pytest.fixture
def appliance(agent_server, lgwan_dns, ntp_server, tmp_path):  # type: ignore[no-untyped-def]
    """A site and its agent.toml (LGWAN DNS and NTP from the fixtures)."""
    made: list[Site] = []

    def make(lasdec: str, *, ntp: str | None = None, **extra) -> tuple[Site, Path]:  # type: ignore[no-untyped-def]
        site = Site(agent_server, tmp_path / f"site{len(made)}", lasdec)
        made.append(site)
        config = site.write_config(
            tmp_path / f"agent{len(made)}.toml",
            dns_servers=[lgwan_dns.address],
            ntp_servers=[ntp or ntp_server.address],
            **extra,
        )
        return site, config

    yield make
    for site in made:
        site.close()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_sync_runs_the_cycle_and_prints_its_report_as_json(appliance):
    site, config = appliance(API_B)
    (site.folders.outbox / "today.csv").write_bytes(notice_file(API_B, 2, "cli"))

    result = invoke("sync", "--json", "--config", str(config))

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "ok" and report["exit_code"] == 0 and report["kind"] == "sync"
    assert {c["name"]: c["status"] for c in report["checks"]} == {"clock": "pass", "dns": "pass"}
    assert report["uploads"]["sent"] == 1 and report["downloads"]["placed"] >= 1
    assert "today.csv" in site.files("sent")
    recorded = json.loads(site.queue.last_run().summary_json)
    assert recorded["run_id"] == report["run_id"] and recorded["status"] == "ok"


def test_sync_prints_a_short_report_for_people(appliance):
    _site, config = appliance(API_C)
    result = invoke("sync", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "renkei-agent sync: ok" in result.stdout
    assert "download:" in result.stdout and "upload:" in result.stdout


def test_a_rejected_file_makes_exit_status_1_and_names_the_problem(appliance):
    site, config = appliance(API_C)
    (site.folders.outbox / "broken.csv").write_bytes(b"not a notice file")

    result = invoke("sync", "--upload-only", "--config", str(config))

    assert result.exit_code == 1
    assert "file.encoding" in result.stdout and "住基統一文字コード" in result.stdout
    assert (site.folders.rejected / "broken.csv.report.txt").exists()


@pytest.mark.parametrize(
    ("flag", "kind", "placed", "sent"),
    [("--download-only", "download", True, False), ("--upload-only", "upload", False, True)],
)
def test_one_direction_only(appliance, agent_server, flag, kind, placed, sent):
    from tests.agent.helpers import pending, publish_days

    site, config = appliance(API_A)
    publish_days(agent_server, {API_A: 1})
    assert pending(agent_server, API_A)
    (site.folders.outbox / "one.csv").write_bytes(notice_file(API_A, 1, f"one{kind}"))

    result = invoke("sync", flag, "--json", "--config", str(config))

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == kind
    assert bool(site.files("inbox")) is placed
    assert ("one.csv" in site.files("sent")) is sent
    assert ("one.csv" in site.files("outbox")) is not sent


def test_a_clock_too_far_off_is_refused_with_status_3(appliance, ntp_server_ahead):
    site, config = appliance(API_B, ntp=ntp_server_ahead.address)
    (site.folders.outbox / "wait.csv").write_bytes(notice_file(API_B, 1, "clock"))

    result = invoke("sync", "--json", "--config", str(config))

    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "refused"
    assert report["problems"][0]["code"] == "preflight.clock"
    assert "時計" in report["problems"][0]["message_ja"]
    assert "wait.csv" in site.files("outbox")  # nothing was done
    assert site.files("inbox") == {}


def test_another_run_holding_the_lock_gives_status_4(appliance):
    site, config = appliance(API_B)
    with Queue(site.config.queue_path) as other, other.lock():
        result = invoke("sync", "--config", str(config))
    assert result.exit_code == 4
    assert "another renkei-agent process" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["sync", "--download-only", "--upload-only"], "exclude each other"),
        (["sync", "--no-such-option"], "No such option"),
    ],
)
def test_usage_errors_give_status_2(appliance, args, needle):
    _site, config = appliance(API_A)
    result = invoke(*args, "--config", str(config))
    assert result.exit_code == 2
    assert needle in result.output


def test_a_bad_configuration_gives_status_2_naming_the_key(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text('lasdec = "131017"\n', encoding="utf-8")
    for command in ("sync", "status"):
        result = invoke(command, "--config", str(config))
        assert result.exit_code == 2
        assert str(config) in result.stderr and "server_url" in result.stderr


def test_a_crash_hook_naming_no_checkpoint_is_a_configuration_error(appliance, monkeypatch):
    _site, config = appliance(API_A)
    monkeypatch.setenv("RENKEI_AGENT_CRASH_AT", "download.nowhere")
    result = invoke("sync", "--config", str(config))
    assert result.exit_code == 2 and "unknown checkpoint" in result.stderr


def test_status_shows_last_run_queue_outbox_checks_and_next_run(appliance):
    site, config = appliance(API_C)
    never = json.loads(invoke("status", "--json", "--config", str(config)).stdout)
    assert never["last_run"] is None and never["last_placed_sequence"] is None

    invoke("sync", "--config", str(config))
    (site.folders.outbox / "waiting.csv").write_bytes(notice_file(API_C, 1, "status"))
    result = invoke("status", "--json", "--config", str(config))

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["last_run"]["status"] == "ok" and data["last_run"]["kind"] == "sync"
    assert data["last_ok_run"] == data["last_run"]["started_at"]
    assert data["queue"]["downloads"]["acknowledged"] >= 1
    assert data["last_placed_sequence"] == max(site.queue.placed_sequences())
    assert data["outbox"]["complete"] == ["waiting.csv"]
    assert {c["name"]: c["status"] for c in data["checks"]} == {"clock": "pass", "dns": "pass"}
    assert data["next_run"] == "unknown"  # no systemd here

    text = invoke("status", "--config", str(config)).stdout
    assert "last run:" in text and "next run:      unknown" in text and "dns:" in text


def test_status_lists_uploads_waiting_for_a_retry(appliance, agent_server):
    from tests.agent.conftest import SERVER_NAME, free_port

    site, config = appliance(API_A)
    (site.folders.outbox / "later.csv").write_bytes(notice_file(API_A, 1, "later"))
    with agent_server.transport(site.terminal, url=f"https://{SERVER_NAME}:{free_port()}") as dead:
        site.sync(transport=dead, download=False)
    data = json.loads(invoke("status", "--json", "--config", str(config)).stdout)
    (row,) = data["uploads_waiting"]
    assert row["file_name"] == "later.csv" and row["state"] == "failed"
    assert "net.refused" in row["last_error"] and row["next_try"]


class _Ran:
    def __init__(self, returncode: int, stdout: str):
        self.returncode = returncode
        self.stdout = stdout


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (_Ran(0, "Mon 2026-11-30 17:42:10 JST\n"), "Mon 2026-11-30 17:42:10 JST"),
        (_Ran(0, "\n"), "unknown"),
        (_Ran(1, ""), "unknown"),
        (FileNotFoundError(), "unknown"),
        (subprocess.TimeoutExpired("systemctl", 5), "unknown"),
    ],
)
def test_next_scheduled_run_reads_the_timer(answer, expected):
    seen: list[list[str]] = []

    def run(argv, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(argv)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert next_scheduled_run(run, systemctl="/usr/bin/systemctl") == expected
    assert seen[0] == [
        "/usr/bin/systemctl",
        "show",
        "renkei-agent.timer",
        "-p",
        "NextElapseUSecRealtime",
        "--value",
    ]


@pytest.mark.parametrize("command", ["sync", "status"])
def test_every_command_has_help_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Example:" in result.output
    assert "Example:" in invoke("--help").output
