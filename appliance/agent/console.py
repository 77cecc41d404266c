"""``renkei-agent console``: the staff's full-screen menu on the appliance's local console (tty1).

Municipal staff at the counter have no shell and no English: this is a
keyboard-only text menu in Japanese showing today's state and offering the
few things they do by hand — send and receive now, move files to and from
registered media, read why a file was sent back.  It runs as the agent's
user under ``renkei-console.service`` instead of a getty, so the only way
out of it is a restart by systemd: ``q`` returns to the main menu, the
terminal's signal keys (Ctrl-C, Ctrl-Z, Ctrl-\\) are ordinary keys in raw
mode, and nothing it runs goes through a shell.

Actions run the agent's own commands as child processes (``renkei-agent
sync --retry-failed``, ``renkei-agent media …``), so the console gets the
same lock, checks and report as the timer, and a crash of an action cannot
take the menu down.  The state shown is read from the queue and the folders
only — the network preflight is not repeated on every redraw; clock and DNS
are shown as the last run found them.

Widths are display columns (East Asian wide characters take two), so the
Japanese labels line up; anything that fails to load is shown as an error
line, never raised.
"""

from __future__ import annotations

import contextlib
import curses
import json
import locale
import os
import pty
import select
import shutil
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from .config import AgentConfig, load_config
from .errors import AgentError
from .folders import Folders, is_temporary_name
from .queue import Queue
from .reports import JST

__all__ = [
    "MENU",
    "MIN_SIZE",
    "CommandResult",
    "ReportEntry",
    "TodayState",
    "agent_argv",
    "clip",
    "console",
    "describe_media",
    "describe_sync",
    "list_reports",
    "load_state",
    "media_argv",
    "read_report",
    "run_command",
    "text_width",
    "wrap",
]

#: Smallest terminal the screens are laid out for: (columns, lines).
MIN_SIZE = (80, 24)
#: How often the main menu re-reads the queue and folders, seconds.
REFRESH_SECONDS = 30.0

#: The main menu: (key, label).  There is deliberately no "exit" entry.
MENU: tuple[tuple[str, str], ...] = (
    ("sync", "今すぐ送受信"),
    ("export", "媒体へ書き出し"),
    ("import", "媒体から取り込み"),
    ("eject", "媒体の取り外し"),
    ("reports", "不備の報告を見る"),
)

_RUN_STATUS_JA = {
    "ok": "正常に終了",
    "partial": "終了（差し戻したファイル等あり）",
    "failed": "一部失敗（次回の連携で再試行します）",
    "refused": "中止（端末の時計がずれています）",
    "cut short": "途中で中断されました",
    "running": "実行中",
}
_CHECK_NAME_JA = {"clock": "時刻", "dns": "DNS"}
_CHECK_STATUS_JA = {"pass": "正常", "warn": "注意", "fail": "異常"}


# --- display width --------------------------------------------------------------------------


def _char_width(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def text_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: wide (W, F) characters two, combining marks none."""
    return sum(_char_width(char) for char in text)


def clip(text: str, width: int) -> str:
    """The longest start of ``text`` that fits in ``width`` columns (control characters dropped)."""
    out: list[str] = []
    used = 0
    for char in text:
        if unicodedata.category(char) == "Cc":
            continue
        w = _char_width(char)
        if used + w > width:
            break
        out.append(char)
        used += w
    return "".join(out)


def wrap(text: str, width: int) -> list[str]:
    """``text`` cut into lines of at most ``width`` columns (by characters: Japanese has no spaces)."""
    lines: list[str] = []
    for raw in text.expandtabs(4).splitlines() or [""]:
        line = "".join(c for c in raw if unicodedata.category(c) != "Cc")
        while text_width(line) > width:
            head = clip(line, width) or line[:1]
            lines.append(head)
            line = line[len(head) :]
        lines.append(line)
    return lines


def _pad(text: str, width: int) -> str:
    text = clip(text, width)
    return text + " " * (width - text_width(text))


# --- today's state --------------------------------------------------------------------------


@dataclass
class TodayState:
    """What the main menu shows; ``errors`` lists what could not be read, in Japanese."""

    day: str
    fetched: int | None = None
    sent: int | None = None
    rejected: int | None = None
    inbox_files: int | None = None
    outbox_ready: int | None = None
    uploads_waiting: int | None = None
    last_run: str = "まだ実行されていません"
    checks: str = "記録がありません"
    next_run: str = "不明"
    errors: list[str] = field(default_factory=list)


def _jst(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, JST)


def _count_files(folder: Path) -> int:
    return sum(
        1
        for entry in os.scandir(folder)
        if entry.is_file(follow_symlinks=False) and not is_temporary_name(entry.name)
    )


def load_state(
    config: AgentConfig, *, now: float | None = None, next_run: Callable[[], str] | None = None
) -> TodayState:
    """Today's (Japan's calendar day) counts from the queue's runs, the folders, the last run.

    Never raises: a missing folder, an unreadable queue or a bad run record
    becomes a line in ``errors``.  ``next_run()`` gives the timer's next run
    (default: ``systemctl``, via :func:`appliance.agent.cli.next_scheduled_run`).
    """
    now = time.time() if now is None else now
    today = _jst(now).replace(hour=0, minute=0, second=0, microsecond=0)
    state = TodayState(day=today.strftime("%Y年%m月%d日"))
    folders = Folders(config.folder_root, config.state_dir)
    for label, folder, attr in (
        ("受信フォルダ", folders.inbox, "inbox_files"),
        ("送信フォルダ", folders.outbox, None),
    ):
        try:
            count = _count_files(folder)
        except OSError as exc:
            state.errors.append(f"{label}（{folder}）を読めません: {exc.strerror or exc}")
            continue
        if attr:
            setattr(state, attr, count)
        else:
            state.outbox_ready = count
    try:
        _load_runs(config, state, since=today.timestamp())
    except (AgentError, OSError, ValueError) as exc:
        message = getattr(exc, "message_ja", None) or str(exc)
        state.errors.append(f"連携の記録を読めません: {message}")
    try:
        if next_run is None:
            from .cli import next_scheduled_run

            next_run = next_scheduled_run
        value = next_run()
        state.next_run = (
            "不明（自動連携のタイマーが見つかりません）" if value == "unknown" else value
        )
    except Exception as exc:  # the menu must come up whatever systemctl does
        state.errors.append(f"次回の自動連携の時刻を読めません: {exc}")
    return state


def _load_runs(config: AgentConfig, state: TodayState, *, since: float) -> None:
    if not config.queue_path.exists():
        state.fetched = state.sent = state.rejected = state.uploads_waiting = 0
        return
    with Queue(config.queue_path) as queue:
        fetched = sent = rejected = 0
        rows = queue.db.execute(
            "SELECT summary_json FROM runs WHERE started_at >= ? AND status != 'running'", [since]
        )
        for (summary,) in rows:
            data = _summary(summary)
            downloads = data.get("downloads") or {}
            uploads = data.get("uploads") or {}
            fetched += int(downloads.get("placed", 0))
            sent += int(uploads.get("sent", 0)) + int(uploads.get("duplicate", 0))
            rejected += int(uploads.get("rejected", 0)) + int(uploads.get("refused", 0))
        state.fetched, state.sent, state.rejected = fetched, sent, rejected
        state.uploads_waiting = len(queue.uploads(["queued", "sending", "failed", "given_up"]))
        last = queue.last_run()
        if last is not None:
            status = "cut short" if last.status == "running" else last.status
            when = _jst(last.started_at).strftime("%m月%d日 %H:%M")
            state.last_run = f"{when}  {_RUN_STATUS_JA.get(status, status)}"
            checks = _summary(last.summary_json).get("checks") or []
            if checks:
                state.checks = " / ".join(
                    f"{_CHECK_NAME_JA.get(c.get('name'), c.get('name'))}: "
                    f"{_CHECK_STATUS_JA.get(c.get('status'), c.get('status'))}"
                    for c in checks
                )


def _summary(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


# --- running the agent's commands -----------------------------------------------------------


@dataclass
class CommandResult:
    """A finished child: exit status, stdout, and the lines it wrote to stderr."""

    returncode: int
    stdout: str
    stderr_lines: list[str]


def agent_argv(config_path: Path | None, *args: str) -> list[str]:
    """``renkei-agent ARGS`` as this Python runs it (no shell, no PATH lookup)."""
    argv = [sys.executable, "-m", "appliance.agent.cli", *args]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    return argv


def run_command(
    argv: Sequence[str], *, on_line: Callable[[str], None] | None = None, tick: float = 0.2
) -> CommandResult:
    """Run ``argv``; its stderr is a pseudo-terminal, so the agent prints its progress lines.

    Each stderr line goes to ``on_line`` as it arrives (and ``on_line("")``
    every ``tick`` seconds of silence, so a screen can stay alive).  A
    command that cannot be started is a result with status 127 and the reason.
    """
    master, slave = pty.openpty()
    try:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        os.close(master)
        os.close(slave)
        return CommandResult(127, "", [f"{argv[0]}: {exc.strerror or exc}"])
    os.close(slave)
    assert child.stdout is not None
    out_fd = child.stdout.fileno()
    stdout = bytearray()
    pending = b""
    lines: list[str] = []
    open_fds = {master, out_fd}
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [], tick)
        if not ready and on_line is not None:
            on_line("")
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                chunk = b""
            if not chunk:
                open_fds.discard(fd)
                continue
            if fd == out_fd:
                stdout += chunk
                continue
            pending += chunk
            *whole, pending = pending.replace(b"\r", b"").split(b"\n")
            for raw in whole:
                line = raw.decode("utf-8", "replace")
                lines.append(line)
                if on_line is not None:
                    on_line(line)
    if pending:
        lines.append(pending.decode("utf-8", "replace"))
    os.close(master)
    child.stdout.close()
    return CommandResult(child.wait(), stdout.decode("utf-8", "replace"), lines)


def _stderr_message(lines: Sequence[str]) -> list[str]:
    return [f"  {line.removeprefix('renkei-agent: ')}" for line in lines if line.strip()][-6:]


def describe_sync(result: CommandResult) -> list[str]:
    """The outcome of ``sync --json`` in plain Japanese: a headline, counts, then each problem."""
    try:
        report = json.loads(result.stdout) if result.stdout.strip() else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        if result.returncode == 4:
            return ["別の連携処理が実行中です。しばらく待ってからもう一度実行してください。"]
        if result.returncode == 2:
            head = "設定に誤りがあるため実行できませんでした。技術者に連絡してください。"
        else:
            head = f"連携処理が異常終了しました（終了コード {result.returncode}）。"
        return [head, *_stderr_message(result.stderr_lines)]
    headline = {
        "ok": "送受信が正常に終わりました。",
        "partial": "送受信は終わりましたが、差し戻したファイル等があります。",
        "failed": "送受信の一部ができませんでした。次回の連携で自動的に再試行します。",
        "refused": "端末の時計がずれているため、送受信を中止しました。技術者に連絡してください。",
    }.get(str(report.get("status")), f"送受信の結果: {report.get('status')}")
    down = report.get("downloads") or {}
    up = report.get("uploads") or {}
    rows = [
        ("受信した法務省通知", down.get("placed", 0)),
        ("送信した市町村通知", up.get("sent", 0) + up.get("duplicate", 0)),
        ("差し戻したファイル", up.get("rejected", 0) + up.get("refused", 0)),
        ("送信できなかったファイル", up.get("failed", 0) + up.get("given_up", 0)),
    ]
    lines = [headline, "", *(f"  {_pad(label, 26)}{count} 件" for label, count in rows)]
    if up.get("rejected", 0) + up.get("refused", 0):
        lines.append("  差し戻した理由はメニューの「不備の報告を見る」で確認できます。")
    notes = [*(report.get("problems") or []), *(report.get("warnings") or [])]
    if notes:
        lines += ["", "詳しい内容:"]
    for note in notes:
        subject = f"{note.get('subject')}: " if note.get("subject") else ""
        lines.append(f"・{subject}{note.get('message_ja') or note.get('message')}")
    return lines


_MEDIA_RESULT_JA = {
    0: "完了しました。",
    1: "取り込めなかったファイルがあります。理由は媒体の MUNICIPALITY/refused/ にあります。",
    2: "実行する権限がないか、設定に誤りがあります。技術者に連絡してください。",
    5: "媒体を読み書きできませんでした（差し込まれていない・登録されていない・壊れている・"
    "途中で抜かれた・空きがない）。",
}


def describe_media(result: CommandResult) -> list[str]:
    """A ``renkei-agent media …`` outcome (exit codes of media_cli.py), then what it printed."""
    head = _MEDIA_RESULT_JA.get(
        result.returncode, f"できませんでした（終了コード {result.returncode}）。"
    )
    output = [f"  {line}" for line in result.stdout.splitlines() if line.strip()]
    details = [*output[-12:], *_stderr_message(result.stderr_lines)]
    return [head, *(["", "詳細:", *details] if details else [])]


def media_argv(config_path: Path | None, action: str) -> list[str]:
    """``renkei-agent media ACTION``; media commands need root, so through ``sudo -n`` otherwise.

    The appliance's sudoers allows the console's user exactly these three
    commands of the installed ``renkei-agent`` (no password, no other
    arguments when the default configuration is used).
    """
    if os.geteuid() == 0:
        return agent_argv(config_path, "media", action)
    script = shutil.which("renkei-agent") or str(Path(sys.executable).with_name("renkei-agent"))
    argv = ["sudo", "-n", script, "media", action]
    return argv + (["--config", str(config_path)] if config_path is not None else [])


# --- rejection reports ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReportEntry:
    """A ``.report.txt`` in rejected/ (差戻し) or sent/ (送信済み, some records refused)."""

    folder: str
    name: str
    mtime: float
    path: Path


def list_reports(folders: Folders) -> tuple[list[ReportEntry], list[str]]:
    """Every report in rejected/ and sent/, newest first, and the folders that could not be read."""
    entries: list[ReportEntry] = []
    errors: list[str] = []
    for label, folder in (("差戻し", folders.rejected), ("送信済み", folders.sent)):
        try:
            with os.scandir(folder) as found:
                for entry in found:
                    if entry.name.endswith(".report.txt") and not is_temporary_name(entry.name):
                        with contextlib.suppress(OSError):
                            mtime = entry.stat(follow_symlinks=False).st_mtime
                            entries.append(ReportEntry(label, entry.name, mtime, Path(entry.path)))
        except OSError as exc:
            errors.append(f"{label}フォルダ（{folder}）を読めません: {exc.strerror or exc}")
    entries.sort(key=lambda e: (-e.mtime, e.name))
    return entries, errors


def read_report(path: Path) -> list[str]:
    """The report's lines; a file that cannot be read or decoded starts with an error line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [f"【エラー】報告ファイルを開けません: {exc.strerror or exc}"]
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        text = data.decode("utf-8", "replace").splitlines()
        return ["【エラー】報告ファイルが壊れています（UTF-8 として読めません）。", "", *text]


# --- the screens ----------------------------------------------------------------------------


class Console:
    """The curses screens.  Every key that is not listed on a screen is ignored."""

    def __init__(self, screen: Any, config_path: Path | None):
        self.screen = screen
        self.config_path = config_path
        self.config: AgentConfig | None = None
        self.config_error = ""
        self.state: TodayState | None = None
        self.loaded_at = 0.0
        self.selected = 0

    # -- drawing helpers ------------------------------------------------------------------

    def put(self, y: int, x: int, text: str, attr: int = 0) -> None:
        height, width = self.screen.getmaxyx()
        if 0 <= y < height and x < width - 1:
            with contextlib.suppress(curses.error):
                self.screen.addstr(y, x, clip(text, width - 1 - x), attr)

    def frame(self, title: str, footer: str) -> bool:
        """Clear and draw the title and footer; False (and a notice) when the terminal is too small."""
        self.screen.erase()
        height, width = self.screen.getmaxyx()
        if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
            self.put(0, 0, "画面が小さすぎます。")
            self.put(1, 0, f"{MIN_SIZE[0]}x{MIN_SIZE[1]} 以上が必要です（今は {width}x{height}）。")
            self.screen.refresh()
            return False
        clock = _jst(time.time()).strftime("%Y-%m-%d %H:%M")
        head = f" renkei 情報連携端末  {title}"
        self.put(0, 0, _pad(head, width - 1 - len(clock) - 1) + clock, curses.A_REVERSE)
        self.put(1, 0, "-" * (width - 1))
        self.put(height - 2, 0, "-" * (width - 1))
        self.put(height - 1, 1, footer)
        return True

    def key(self, timeout_ms: int = 1000) -> str | int | None:
        self.screen.timeout(timeout_ms)
        try:
            return self.screen.get_wch()
        except curses.error:
            return None

    # -- state ----------------------------------------------------------------------------

    def refresh_state(self, force: bool = False) -> None:
        if not force and self.state is not None and time.time() - self.loaded_at < REFRESH_SECONDS:
            return
        self.loaded_at = time.time()
        try:
            self.config = load_config(self.config_path)
            self.config_error = ""
        except AgentError as exc:
            self.config, self.config_error = None, exc.message
            self.state = None
            return
        self.state = load_state(self.config)

    # -- main menu ------------------------------------------------------------------------

    def draw_main(self) -> None:
        if not self.frame("メニュー", "↑↓ で選び Enter で実行（数字キーでも選べます）"):
            return
        y = 2
        if self.config is None:
            self.put(y + 1, 2, "【エラー】設定ファイルを読めません。技術者に連絡してください。")
            for line in wrap(self.config_error, 74)[:4]:
                y += 1
                self.put(y + 1, 4, line)
            y += 3
        elif self.state is not None:
            s = self.state
            self.put(y, 1, f"本日の状況（{s.day}）  団体コード {self.config.lasdec}", curses.A_BOLD)
            rows = [
                ("受信した法務省通知", _n(s.fetched), "受信フォルダのファイル", _n(s.inbox_files)),
                ("送信した市町村通知", _n(s.sent), "送信フォルダのファイル", _n(s.outbox_ready)),
                ("差し戻したファイル", _n(s.rejected), "送信待ち", _n(s.uploads_waiting)),
            ]
            for i, (a, av, b, bv) in enumerate(rows):
                self.put(y + 1 + i, 3, _pad(a, 20) + _pad(av, 10) + _pad(b, 24) + bv)
            self.put(y + 4, 3, _pad("次回の自動連携", 20) + s.next_run)
            self.put(y + 5, 3, _pad("前回の連携", 20) + s.last_run)
            self.put(y + 6, 3, _pad("時刻・DNS（前回）", 20) + s.checks)
            for i, error in enumerate(s.errors[:3]):
                self.put(y + 7 + i, 3, "【エラー】" + error)
            y += 7 + min(len(s.errors), 3)
        self.put(y + 1, 1, "メニュー", curses.A_BOLD)
        for i, (_action, label) in enumerate(MENU):
            mark = ">" if i == self.selected else " "
            attr = curses.A_REVERSE if i == self.selected else 0
            self.put(y + 2 + i, 3, f"{mark} {i + 1}. {label}", attr)
        self.screen.refresh()

    def run(self) -> None:
        while True:
            self.refresh_state()
            self.draw_main()
            key = self.key()
            if key in (curses.KEY_UP, "k"):
                self.selected = (self.selected - 1) % len(MENU)
            elif key in (curses.KEY_DOWN, "j", "\t"):
                self.selected = (self.selected + 1) % len(MENU)
            elif key in ("\n", "\r", curses.KEY_ENTER):
                self.choose(MENU[self.selected][0])
            elif isinstance(key, str) and key in "12345" and len(key) == 1:
                self.selected = int(key) - 1
                self.choose(MENU[self.selected][0])

    def choose(self, action: str) -> None:
        if action == "sync":
            self.run_screen(
                "今すぐ送受信",
                agent_argv(self.config_path, "sync", "--retry-failed", "--json"),
                describe_sync,
            )
        elif action == "reports":
            self.reports_screen()
        else:
            title = dict(MENU)[action]
            if not _media_available():
                self.message_screen(title, ["この機能は準備中です。"])
            else:
                self.run_screen(title, media_argv(self.config_path, action), describe_media)
        self.refresh_state(force=True)

    # -- actions --------------------------------------------------------------------------

    def run_screen(
        self, title: str, argv: list[str], describe: Callable[[CommandResult], list[str]]
    ) -> None:
        progress: list[str] = []

        def show(line: str) -> None:
            if line:
                progress.append(line)
            if not self.frame(title, "実行中です。しばらくお待ちください…"):
                return
            self.put(3, 2, "実行中です…（終わるまで端末の電源を切らないでください）", curses.A_BOLD)
            height, _width = self.screen.getmaxyx()
            room = height - 7
            for i, text in enumerate(progress[-room:]):
                self.put(5 + i, 4, text)
            self.screen.refresh()
            self.screen.timeout(0)
            with contextlib.suppress(curses.error):  # keys typed meanwhile do nothing
                while self.screen.get_wch() is not None:
                    pass

        show("")
        result = run_command(argv, on_line=show)
        self.message_screen(title, describe(result))

    def message_screen(self, title: str, lines: list[str]) -> None:
        self.pager(title, lines, footer="q または Enter でメニューに戻ります")

    def reports_screen(self) -> None:
        selected = 0
        while True:
            self.refresh_state()
            entries: list[ReportEntry] = []
            errors: list[str] = []
            if self.config is None:
                errors = ["設定ファイルを読めないため、報告を探せません。"]
            else:
                entries, errors = list_reports(
                    Folders(self.config.folder_root, self.config.state_dir)
                )
            selected = min(selected, max(len(entries) - 1, 0))
            if self.frame("不備の報告", "↑↓ で選び Enter で開く　q でメニューに戻る"):
                height, _width = self.screen.getmaxyx()
                self.put(2, 1, "差し戻したファイル等の報告（新しい順）", curses.A_BOLD)
                y = 3
                for error in errors:
                    self.put(y, 3, "【エラー】" + error)
                    y += 1
                if not entries:
                    self.put(y + 1, 3, "不備の報告はありません。")
                room = height - 3 - y
                top = max(0, selected - room + 1)
                for i, entry in enumerate(entries[top : top + room]):
                    index = top + i
                    when = _jst(entry.mtime).strftime("%m/%d %H:%M")
                    name = entry.name.removesuffix(".report.txt")
                    text = f"{_pad(entry.folder, 9)}{when}  {name}"
                    attr = curses.A_REVERSE if index == selected else 0
                    self.put(y + i, 3, ("> " if index == selected else "  ") + text, attr)
                self.screen.refresh()
            key = self.key()
            if key in ("q", "Q", "\x1b"):
                return
            if key in (curses.KEY_UP, "k") and entries:
                selected = (selected - 1) % len(entries)
            elif key in (curses.KEY_DOWN, "j") and entries:
                selected = (selected + 1) % len(entries)
            elif key in ("\n", "\r", curses.KEY_ENTER) and entries:
                entry = entries[selected]
                self.pager(f"報告 {entry.name}", read_report(entry.path))

    def pager(
        self, title: str, lines: list[str], footer: str = "↑↓ PgUp PgDn で移動　q で戻る"
    ) -> None:
        top = 0
        while True:
            height, width = self.screen.getmaxyx()
            shown = [row for line in lines for row in wrap(line, max(width - 4, 10))]
            room = max(height - 5, 1)
            top = max(0, min(top, len(shown) - room))
            if self.frame(title, footer):
                for i, row in enumerate(shown[top : top + room]):
                    attr = curses.A_BOLD if row.startswith("【エラー】") else 0
                    self.put(3 + i, 2, row, attr)
                if len(shown) > room:
                    self.put(
                        2, 2, f"（{top + 1}–{min(top + room, len(shown))} 行 / {len(shown)} 行）"
                    )
                self.screen.refresh()
            key = self.key()
            if key in ("q", "Q", "\x1b", "\n", "\r", curses.KEY_ENTER):
                return
            moves = {
                curses.KEY_UP: -1,
                "k": -1,
                curses.KEY_DOWN: 1,
                "j": 1,
                curses.KEY_PPAGE: -room,
                curses.KEY_NPAGE: room,
                " ": room,
            }
            if key in moves:
                top += moves[key]
            elif key == curses.KEY_HOME:
                top = 0
            elif key == curses.KEY_END:
                top = len(shown)


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value} 件"


def _media_available() -> bool:
    """True when this agent has the ``media`` commands (issue 5); the menu says 準備中 otherwise."""
    try:
        from .cli import main

        return "media" in main.commands
    except Exception:
        return False


def _curses_main(screen: Any, config_path: Path | None) -> None:
    curses.raw()  # Ctrl-C, Ctrl-Z, Ctrl-\ are keys, not signals: no way out to a shell
    curses.noecho()
    screen.keypad(True)
    with contextlib.suppress(curses.error):
        curses.curs_set(0)
    Console(screen, config_path).run()


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="agent.toml to read (default: $RENKEI_AGENT_CONFIG, else /etc/renkei/agent.toml).",
)
def console(config_path: Path | None) -> None:
    """Full-screen menu in Japanese for municipal staff on the local console (tty1).

    Shows today's state and offers send/receive now, the media commands and
    the rejection reports.  It never exits by a key; renkei-console.service
    runs it on tty1 and restarts it.

    \b
    Example:
      renkei-agent console --config /etc/renkei/agent.toml
    """
    locale.setlocale(locale.LC_ALL, "")
    os.environ.setdefault("ESCDELAY", "25")
    # LINES and COLUMNS in the environment would pin ncurses to that size and hide resizes.
    os.environ.pop("LINES", None)
    os.environ.pop("COLUMNS", None)
    curses.wrapper(_curses_main, config_path)
