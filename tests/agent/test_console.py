"""``renkei-agent console``: the staff menu driven in tmux, against the real server, DNS and NTP.

The console runs as a real process in a tmux pane of 100x30 (``LANG=C.UTF-8``);
the tests type with ``send-keys`` and read the screen with ``capture-pane``.
Its "send now" runs the real ``renkei-agent sync`` against the module's
server.  The parts that need no terminal (widths, the Japanese wording of a
run's result, today's state when files are missing or broken) are tested
directly.  tmux runs on a private socket (``-L``) and is killed afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from appliance.agent.config import AgentConfig
from appliance.agent.console import (
    MENU,
    CommandResult,
    clip,
    describe_media,
    describe_sync,
    list_reports,
    load_state,
    media_argv,
    read_report,
    run_command,
    text_width,
    wrap,
)
from appliance.agent.folders import Folders
from appliance.agent.queue import Queue, RunRow
from tests.agent.test_sync_download import Site, pending
from tests.agent.test_sync_upload import notice_file
from tests.server.conftest import API_C

REPO = Path(__file__).resolve().parents[2]


# --- tmux ------------------------------------------------------------------------------------


class Tmux:
    """One console in a detached tmux session on a private server socket."""

    def __init__(self, argv: list[str], *, width: int = 100, height: int = 30):
        self.tmux = shutil.which("tmux")
        if self.tmux is None:
            pytest.skip("tmux is not installed (Debian: tmux)")
        self.socket = f"renkei-console-test-{uuid.uuid4().hex[:8]}"
        env = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONPATH": str(REPO)}
        self.tmux_cmd(
            "-f", "/dev/null", "new-session", "-d", "-x", str(width), "-y", str(height),
            *[arg for key, value in env.items() for arg in ("-e", f"{key}={value}")],
            "-c", str(REPO), *argv,
        )  # fmt: skip
        self.tmux_cmd("set-option", "-g", "remain-on-exit", "on")  # a crash stays readable

    def tmux_cmd(self, *args: str) -> str:
        assert self.tmux is not None
        done = subprocess.run(
            [self.tmux, "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self.tmux_cmd("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.tmux_cmd("send-keys", key)
            time.sleep(0.05)

    def wait_for(self, *texts: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if all(text in screen for text in texts):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{texts} not on the screen:\n{screen}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.tmux_cmd("display-message", "-p", "#{pane_dead}").strip() == "0"

    def close(self) -> None:
        uid = os.getuid()
        tmpdir = os.environ.get("TMUX_TMPDIR", "/tmp")
        path = Path(tmpdir) / f"tmux-{uid}" / self.socket
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True)
        Path(path).unlink(missing_ok=True)


@pytest.fixture
def appliance(agent_server, lgwan_dns, ntp_server, tmp_path):  # type: ignore[no-untyped-def]
    """A site for API_C with its agent.toml (LGWAN DNS and NTP from the fixtures)."""
    site = Site(agent_server, tmp_path / "site", API_C)
    config = site.write_config(
        tmp_path / "agent.toml", dns_servers=[lgwan_dns.address], ntp_servers=[ntp_server.address]
    )
    yield site, config
    site.close()


@pytest.fixture
def console(appliance):  # type: ignore[no-untyped-def]
    _site, config = appliance
    consoles: list[Tmux] = []

    def start(**size: int) -> Tmux:
        argv = [sys.executable, "-m", "appliance.agent.cli", "console", "--config", str(config)]
        tmux = Tmux(argv, **size)
        consoles.append(tmux)
        return tmux

    yield start
    for tmux in consoles:
        tmux.close()


def _column_of(screen: str, label: str, after: str) -> int:
    """Display column where ``after`` starts on the line holding ``label``."""
    line = next(line for line in screen.splitlines() if label in line)
    return text_width(line[: line.index(after, line.index(label))])


# --- the console in tmux ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_menu_is_in_japanese_aligned_and_stray_keys_do_nothing(console, appliance):
    site, _config = appliance
    tmux = console()
    screen = tmux.wait_for("今すぐ送受信", "本日の状況")
    for _action, label in MENU:
        assert label in screen
    for label in (
        "受信した法務省通知",
        "送信した市町村通知",
        "差し戻したファイル",
        "次回の自動連携",
    ):
        assert label in screen
    assert "時刻・DNS（前回）" in screen and "記録がありません" in screen
    assert "終了" not in screen  # no way out is offered
    # the counts line up although the labels are of wide characters
    columns = {_column_of(screen, label, "件") for label in ("受信した法務省", "送信した市町村")}
    assert len(columns) == 1, screen

    # keys that mean "quit", "interrupt", "suspend" or nothing at all
    tmux.keys("q", "x", "Escape", "C-c", "C-z", "C-\\", "C-d", "F1", "0", "9", "Left", "Right")
    time.sleep(0.5)
    assert tmux.alive(), tmux.screen()
    assert "今すぐ送受信" in tmux.wait_for("本日の状況")
    assert site.files("inbox") == {}  # nothing ran

    tmux.tmux_cmd("resize-window", "-x", "60", "-y", "20")
    tmux.wait_for("画面が小さすぎます", "80x24")
    tmux.tmux_cmd("resize-window", "-x", "100", "-y", "30")
    tmux.wait_for("今すぐ送受信")
    assert tmux.alive()


@pytest.mark.slow
def test_send_now_runs_a_sync_shows_the_result_and_the_reports_can_be_read(
    console, appliance, agent_server
):
    site, _config = appliance
    waiting = pending(agent_server, API_C)
    (site.folders.outbox / "今日の分.csv").write_bytes(notice_file(API_C, 2, "console"))
    (site.folders.outbox / "broken.csv").write_bytes(b"not a notice file")
    tmux = console()
    tmux.wait_for("今すぐ送受信")

    tmux.keys("Enter")  # the first entry: 今すぐ送受信
    screen = tmux.wait_for("メニューに戻ります", timeout=30)

    assert "差し戻したファイル等があります" in screen, screen
    assert re.search(rf"受信した法務省通知 +{len(waiting)} 件", screen)
    assert re.search(r"送信した市町村通知 +1 件", screen)
    assert re.search(r"差し戻したファイル +1 件", screen)
    assert _column_of(screen, "受信した法務省通知", "件") == _column_of(
        screen, "送信できなかったファイル", "件"
    )
    assert "broken.csv" in screen  # the problem, named
    assert len(site.files("inbox")) == len(waiting) >= 1
    assert "今日の分.csv" in site.files("sent")
    assert "broken.csv.report.txt" in site.files("rejected")

    tmux.keys("q")
    screen = tmux.wait_for("本日の状況", "前回の連携")
    assert "終了（差し戻したファイル等あり）" in screen
    assert "時刻: 正常" in screen and "DNS: 正常" in screen
    # today's counts now include the run
    fetched = next(line for line in screen.splitlines() if "受信した法務省通知" in line)
    assert f"{len(waiting)} 件" in fetched

    # a corrupt report, newer than the real one, is listed first
    corrupt = site.folders.rejected / "zzz.csv.report.txt"
    corrupt.write_bytes(b"\xff\xfe\x00 broken \x80")
    os.utime(corrupt, (time.time() + 60, time.time() + 60))
    tmux.keys("5")
    screen = tmux.wait_for("不備の報告", "broken.csv", "zzz.csv")
    assert screen.index("zzz.csv") < screen.index("broken.csv")
    tmux.keys("Enter")
    tmux.wait_for("報告ファイルが壊れています")
    tmux.keys("q", "Down", "Enter")
    screen = tmux.wait_for("報告 broken.csv.report.txt")
    assert "住基統一文字コード" in screen, screen
    tmux.keys("q", "q")
    tmux.wait_for("今すぐ送受信", "本日の状況")
    assert tmux.alive()


# --- the parts without a terminal ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "width"),
    [("abc", 3), ("今すぐ送受信", 12), ("ｶﾀｶﾅ", 4), ("A漢字b", 6), ("が", 2), ("e\u0301", 1)],
)
def test_text_width_counts_wide_characters_twice(text, width):
    assert text_width(text) == width


@pytest.mark.parametrize(
    ("text", "width", "clipped"),
    [
        ("今すぐ送受信", 5, "今す"),
        ("今すぐ送受信", 6, "今すぐ"),
        ("ab漢", 3, "ab"),
        ("a\tb", 5, "ab"),
    ],
)
def test_clip_never_splits_a_wide_character(text, width, clipped):
    assert clip(text, width) == clipped


def test_wrap_fits_every_line_and_keeps_every_character():
    text = "レコード 12 の在留カード等の番号が誤っています。" * 3
    lines = wrap(text, 20)
    assert all(text_width(line) <= 20 for line in lines)
    assert "".join(lines) == text


def _report(status: str, **counts: int) -> str:
    return json.dumps(
        {
            "status": status,
            "downloads": {"placed": counts.get("placed", 0)},
            "uploads": {k: counts.get(k, 0) for k in ("sent", "rejected", "failed")},
            "problems": [
                {"code": "x", "subject": "a.csv", "message": "m", "message_ja": "日本語の理由"}
            ],
            "warnings": [],
        }
    )


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (CommandResult(0, _report("ok", placed=2), []), ["正常に終わりました", "2 件"]),
        (
            CommandResult(1, _report("partial", rejected=1), []),
            ["差し戻した", "a.csv: 日本語の理由"],
        ),
        (CommandResult(1, _report("failed", failed=1), []), ["再試行"]),
        (CommandResult(3, _report("refused"), []), ["時計がずれている"]),
        (CommandResult(4, "", ["renkei-agent: another run"]), ["別の連携処理が実行中"]),
        (CommandResult(2, "", ["renkei-agent: agent.toml: lasdec: bad"]), ["設定に誤り", "lasdec"]),
        (CommandResult(1, "{not json", ["boom"]), ["異常終了", "boom"]),
    ],
)
def test_a_runs_result_is_told_in_japanese(result, expected):
    text = "\n".join(describe_sync(result))
    for part in expected:
        assert part in text, text


def test_a_command_that_cannot_start_or_fails_is_a_result_not_an_exception(tmp_path):
    missing = run_command([str(tmp_path / "no-such-program")])
    assert missing.returncode == 127 and missing.stderr_lines
    lines: list[str] = []
    failing = run_command(
        [
            sys.executable,
            "-c",
            "import sys; print('out'); sys.stderr.write('進行中\\n'); sys.exit(5)",
        ],
        on_line=lines.append,
    )
    assert failing.returncode == 5 and failing.stdout.strip() == "out"
    assert "進行中" in lines and "進行中" in failing.stderr_lines


@pytest.mark.parametrize(
    ("code", "stderr", "expected"),
    [
        (0, [], "完了しました"),
        (1, [], "MUNICIPALITY/refused/"),
        (2, ["renkei-agent: この操作には管理者（root）の権限が必要です。"], "権限"),
        (5, ["renkei-agent: no medium"], "媒体を読み書きできませんでした"),
        (9, [], "終了コード 9"),
    ],
)
def test_a_media_commands_result_is_told_in_japanese_with_its_message(code, stderr, expected):
    lines = describe_media(CommandResult(code, "exported 2 file(s)\n", stderr))
    assert expected in lines[0]
    assert "  exported 2 file(s)" in lines
    for line in stderr:
        assert f"  {line.removeprefix('renkei-agent: ')}" in lines


@pytest.mark.parametrize(("euid", "sudo"), [(0, False), (998, True)])
def test_media_commands_go_through_sudo_unless_root(monkeypatch, euid, sudo):
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    argv = media_argv(None, "export")
    assert (argv[:2] == ["sudo", "-n"]) is sudo
    assert argv[-2:] == ["media", "export"]


def _config(root: Path) -> AgentConfig:
    key = root / "key.pem"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text("unused")
    return AgentConfig(
        "https://renkei.test", "131016", "T-1", key, "unused", None,
        folder_root=root / "srv", state_dir=root / "state",
    )  # fmt: skip


def test_todays_state_with_no_folders_at_all_lists_errors_instead_of_failing(tmp_path):
    state = load_state(_config(tmp_path), next_run=lambda: "unknown")
    assert state.fetched == 0 and state.inbox_files is None
    assert any("受信フォルダ" in error for error in state.errors)
    assert "不明" in state.next_run
    entries, errors = list_reports(Folders(tmp_path / "srv", tmp_path / "state"))
    assert entries == [] and len(errors) == 2


def test_todays_state_survives_a_corrupt_run_record_and_a_failing_timer_query(tmp_path):
    config = _config(tmp_path)
    Folders(config.folder_root, config.state_dir).ensure()
    now = time.time()
    with Queue(config.queue_path) as queue:
        queue.record_run(RunRow(started_at=now - 10, status="ok", summary_json="{broken"))
        good = {"downloads": {"placed": 2}, "uploads": {"sent": 1, "rejected": 1}}
        good["checks"] = [{"name": "clock", "status": "warn", "detail": "", "hint": ""}]
        queue.record_run(
            RunRow(started_at=now - 5, status="partial", summary_json=json.dumps(good))
        )

    def broken_timer() -> str:
        raise OSError("systemctl hung")

    state = load_state(config, now=now, next_run=broken_timer)
    assert (state.fetched, state.sent, state.rejected) == (2, 1, 1)
    assert "時刻: 注意" in state.checks and "終了" in state.last_run
    assert any("次回の自動連携" in error for error in state.errors)


def test_a_report_that_cannot_be_read_is_an_error_line(tmp_path):
    assert read_report(tmp_path / "gone.report.txt")[0].startswith("【エラー】")
    good = tmp_path / "good.report.txt"
    good.write_bytes("\ufeff差戻しの理由\n2行目\n".encode())
    assert read_report(good) == ["差戻しの理由", "2行目"]
