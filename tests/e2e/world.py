"""The whole system on one machine: the ministry, the LGWAN and several municipalities' terminals.

:class:`World` builds it (``start``) and takes it down (``close``), whatever
happened in between.  A test session builds one per xdist worker
(``conftest.world``) and every scenario reuses it; a scenario that breaks a
part puts it back in a ``finally``.  The world also keeps the ledger the
invariant checks compare against (:mod:`tests.e2e.invariants`): the ministry
notices imported per municipality and the business dates closed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

from common.items import MINISTRY, MUNICIPALITY
from common.noticefile import encode_notice_file, format_json_header, format_json_record
from common.patterns import load_patterns
from common.records import Record
from common.synthetic import SampleFactory
from tests.provisioning.topology import NsChronyd, NsDnsmasq

from . import invariants
from .ministry import SERVER_NAME, MailRelay, Server
from .network import DNS_ADDRESS, NTP_ADDRESS, SERVER_ADDRESS, Lgwan, sweep_stale
from .terminal import AgentRun, NamespaceTerminal, Terminal

__all__ = ["LASDECS", "World", "municipality_records"]

#: The municipalities with a terminal: 千代田区, 札幌市中央区, 浜松市中央区 (receiving units).
LASDECS = ("131016", "011011", "221384")
#: One municipality without a terminal: its notices must reach no terminal here.
ELSEWHERE = "012025"
FIRST_DAY = date(2026, 11, 27)

_MUNICIPALITY_PATTERNS = [p for p in load_patterns(MUNICIPALITY).values() if not p.pending]
_MINISTRY_PATTERNS = [p for p in load_patterns(MINISTRY).values() if not p.pending]


def municipality_records(lasdec: str, count: int, tag: str, *, seed: int = 3) -> list[Record]:
    """Valid municipality notices with record ids ``C-<tag>-<n>`` (unique per tag)."""
    factory = SampleFactory(seed=seed)
    return [
        factory.record(
            _MUNICIPALITY_PATTERNS[i % len(_MUNICIPALITY_PATTERNS)],
            lasdec,
            record_id=f"C-{tag}-{i:05d}",
        )
        for i in range(count)
    ]


class World:
    """See the module docstring."""

    def __init__(
        self, folder: Path, lasdecs: Sequence[str] = LASDECS, *, database_url: str | None = None
    ):
        self.folder = folder
        self.lasdecs = tuple(lasdecs)
        self.database_url = database_url  # None: the server's SQLite file
        self.net = Lgwan()
        self.server: Server | None = None
        self.mail: MailRelay | None = None
        self.dns: NsDnsmasq | None = None
        self.ntp: NsChronyd | None = None
        self.terminals: dict[str, Terminal] = {}
        self.install_checks: dict[str, dict] = {}
        #: lasdec → record ids of the ministry notices imported for it (closed or not).
        self.ministry_ids: dict[str, set[str]] = {}
        self.closed: list[date] = []
        self.server_key = ""
        self._day = FIRST_DAY - timedelta(days=1)
        self._tags = 0

    # -- building ---------------------------------------------------------------------------

    def start(self) -> World:
        sweep_stale()
        try:
            self.net.up()
            self.server = Server(self.net, self.folder, database_url=self.database_url).start()
            self.server_key = self.server.public_key
            self.mail = MailRelay(self.net, self.folder).start()
            self.dns = NsDnsmasq(
                self.net.router,
                self.folder / "dnsmasq",
                DNS_ADDRESS,
                {SERVER_NAME: [SERVER_ADDRESS]},
                local=["test"],
            ).start()
            self.ntp = NsChronyd(
                self.net.router, self.folder / "chrony", NTP_ADDRESS, "10.0.0.0/8"
            ).start()
            for lasdec in self.lasdecs:
                link = self.net.add_terminal(lasdec)
                terminal = NamespaceTerminal(self.net, link, self.folder / f"terminal-{lasdec}")
                self.terminals[lasdec] = terminal.start()
            with ThreadPoolExecutor(len(self.terminals)) as pool:
                checks = pool.map(
                    lambda t: t.install(self.server.token(t.lasdec), self.server.ca_file),
                    self.terminals.values(),
                )
                self.install_checks = dict(zip(self.terminals, checks, strict=True))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for terminal in self.terminals.values():
            with contextlib.suppress(Exception):
                terminal.close()
        for part in (self.ntp, self.dns, self.mail):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.close()
        self.net.close()

    # -- the ministry's day ---------------------------------------------------------------------

    def tag(self, prefix: str) -> str:
        """A fresh tag for record ids and file names."""
        self._tags += 1
        return f"{prefix}{self._tags}"

    def next_day(self) -> date:
        self._day += timedelta(days=1)
        return self._day

    def ministry_notices(self, counts: dict[str, int], day: date, tag: str) -> list[Record]:
        factory = SampleFactory(seed=day.toordinal(), day=day)
        records = []
        for lasdec, count in counts.items():
            for i in range(count):
                pattern = _MINISTRY_PATTERNS[i % len(_MINISTRY_PATTERNS)]
                record = factory.record(pattern, lasdec, record_id=f"M-{tag}-{lasdec}-{i:05d}")
                records.append(record)
                self.ministry_ids.setdefault(lasdec, set()).add(record.record_id)
        return records

    def publish(
        self,
        counts: dict[str, int],
        *,
        extra: Iterable[Record] = (),
        degenerate: bool = False,
        close: bool = True,
        day: date | None = None,
    ) -> tuple[date, dict]:
        """Import notices for a new business day (``counts`` per municipality, plus ``extra``)
        and close the day: every receiving unit gets its batch.  Returns (date, import JSON).

        ``day``: one :meth:`next_day` gave already (to build ``extra`` for it)."""
        day = day or self.next_day()
        tag = self.tag("d")
        records = self.ministry_notices(counts, day, tag)
        for record in extra:
            records.append(record)
            self.ministry_ids.setdefault(record.values["address_code"], set()).add(record.record_id)
        path = self.folder / f"notices-{day:%Y%m%d}.jsonl"
        path.write_text(
            format_json_header(MINISTRY) + "".join(format_json_record(r) for r in records),
            encoding="utf-8",
        )
        assert self.server is not None
        args = ["import", str(path), "--date", day.isoformat(), "--json"]
        imported = self.server.cli_json(*args, *(["--degenerate"] if degenerate else []))
        assert imported["loaded"] == len(records), imported
        if close:
            self.close_day(day)
        return day, imported

    def close_day(self, day: date) -> dict:
        assert self.server is not None
        result = self.server.cli_json("close-day", "--date", day.isoformat(), "--json")
        self.closed.append(day)
        return result

    # -- the terminals -------------------------------------------------------------------------

    def drop_day(self, terminal: Terminal, count: int = 3, *, bad: bool = True) -> dict:
        """Staff drop a good municipality notice file (and a bad one); returns name → record ids."""
        tag = self.tag(f"u{terminal.lasdec}-")
        records = municipality_records(terminal.lasdec, count, tag)
        ids = [r.record_id for r in records]
        terminal.drop(
            f"{tag}.csv", encode_notice_file(MUNICIPALITY, records), expect="sent", record_ids=ids
        )
        dropped = {f"{tag}.csv": ids}
        if bad:
            broken = municipality_records(terminal.lasdec, 2, f"{tag}x")
            column = next(c for c in broken[1].values if c.endswith("date"))
            broken[1] = broken[1].with_values(**{column: "20261399"})
            terminal.drop(
                f"{tag}-bad.csv", encode_notice_file(MUNICIPALITY, broken), expect="rejected"
            )
        return dropped

    def run_agents(
        self,
        lasdecs: Iterable[str] | None = None,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 180.0,
    ) -> dict[str, AgentRun]:
        """The timers fire: the terminals' agents run at once; returns each run."""
        chosen = list(lasdecs or self.terminals)
        return self.finish_agents(self.start_agents(dict.fromkeys(chosen, env), *args), timeout)

    def start_agents(
        self, envs: dict[str, dict[str, str] | None], *args: str
    ) -> dict[str, subprocess.Popen]:
        """Start the agents of the terminals named in ``envs``, each with its environment."""
        for lasdec in envs:
            self.terminals[lasdec].settle()
        started: dict[str, subprocess.Popen] = {}
        try:
            for lasdec, env in envs.items():
                started[lasdec] = self.terminals[lasdec].start_agent(*args, env=env)
        except BaseException:
            for lasdec, process in started.items():
                self.terminals[lasdec].kill_agent(process)
                process.communicate()
            raise
        return started

    def finish_agents(
        self, processes: dict[str, subprocess.Popen], timeout: float = 180.0, summary: bool = True
    ) -> dict[str, AgentRun]:
        with ThreadPoolExecutor(len(processes)) as pool:
            done = {
                lasdec: pool.submit(
                    self.terminals[lasdec].finish_agent, process, timeout=timeout, summary=summary
                )
                for lasdec, process in processes.items()
            }
            return {lasdec: future.result() for lasdec, future in done.items()}

    def catch_up(self) -> dict:
        """Every terminal's "send now" (``sync --retry-failed``), then the final invariants:
        after it, everything published and dropped so far is where it must be."""
        runs = self.run_agents(None, "--retry-failed")
        for code, run in runs.items():
            assert run.status in (0, 1), (code, run.outcome, run.stderr, run.summary)
            assert not [p for p in run.summary.get("problems", []) if p["failure"]], (
                code,
                run.summary,
            )
        return invariants.check(self, final=True)

    def status(self) -> dict:
        """``renkei-server status --all --json``: the operator's view."""
        assert self.server is not None
        return json.loads(self.server.cli("status", "--all", "--json").stdout)
