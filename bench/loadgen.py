"""Load generator: simulated terminals running their daily cycle against the server, signed HTTPS.

Each simulated terminal does what a terminal's evening run does, on its own
fresh TLS connection (a real agent is a new process every run): connect,
list its municipality's batches, download each one (checking the SHA-256),
acknowledge it, upload its municipality notice file, and fetch the receipt
again.  Every request is signed with the terminal's own Ed25519 key exactly
as the test suite's :class:`tests.server.client.SigningClient` signs them —
that client is reused here, so the benchmark sends the requests the
integration tests prove correct.  A terminal starts at its own offset in the
(compressed) randomized window; a request that fails or answers unexpectedly
is an error and ends that terminal's cycle.

Why processes × threads, not asyncio: a terminal's cycle is a short
sequential program, and the concurrency a fleet needs is tens of terminals in
flight, not thousands — blocking clients on threads fit that directly.
CPython's ``ssl`` and ``http.client`` release the GIL for the handshake and
for I/O, so threads overlap the waiting; the CPU a client does spend
(signing each request, hashing bodies) is split over several processes so
one interpreter's GIL does not cap the offered load.  asyncio would need a
second HTTP client (aiohttp, or HTTP written by hand) and runs TLS through
``MemoryBIO`` in Python, which costs more CPU per request on a machine where
the load generator and the server share two cores.  What the generator
itself used is reported (``client_cpu_seconds``), so its share of the
machine is visible.

Workers are separate interpreters (nothing inherited from the benchmark's
own large process) and all begin at one instant ``t0`` taken after every
worker has said it is ready.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = ["KINDS", "FleetRun", "SimTerminal", "percentile", "run_fleet"]

#: Request kinds, in cycle order; ``tls_connect`` is the TCP + TLS handshake.
KINDS = ("tls_connect", "list", "download", "ack", "upload", "receipt")
#: The floor cycle: the same connections and request count, to the unsigned clock endpoint.
FLOOR_KINDS = ("tls_connect", "floor")
CYCLE_REQUESTS = 5
TIMEOUT = 120.0


@dataclass(frozen=True)
class SimTerminal:
    terminal_id: str
    private_key: bytes  # raw 32-byte Ed25519 private key
    upload_path: str  # its municipality notice file (Juki code)
    upload_records: int
    offset: float  # seconds after the common start


@dataclass
class FleetRun:
    """Everything measured in one run; :meth:`summary` is what the report shows."""

    terminals: int
    seconds: float  # t0 to the last terminal's end
    first_start: float
    last_start: float
    max_lateness: float  # how late a terminal started after its offset (the generator's own lag)
    samples: dict[str, list[float]]  # kind -> latencies in seconds
    errors: list[str]
    failed_terminals: int
    client_cpu_seconds: float
    processes: int
    threads: int

    def summary(self) -> dict:
        figures: dict = {
            "terminals": self.terminals,
            "completion_seconds": self.seconds,
            "errors": len(self.errors),
            "failed_terminals": self.failed_terminals,
            "requests": sum(len(v) for k, v in self.samples.items() if k != "tls_connect"),
            "last_start_seconds": self.last_start,
            "max_start_lateness_seconds": self.max_lateness,
            "client_cpu_seconds": self.client_cpu_seconds,
            "client_processes": self.processes,
            "client_threads": self.threads,
        }
        latency: dict = {}
        for kind, values in self.samples.items():
            if values:
                latency[kind] = {
                    "count": len(values),
                    "p50_ms": percentile(values, 50) * 1000,
                    "p99_ms": percentile(values, 99) * 1000,
                    "max_ms": max(values) * 1000,
                }
        figures["latency"] = latency
        if self.errors:
            figures["first_errors"] = self.errors[:5]
        return figures


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0…100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- one terminal ----------------------------------------------------------------------------


class _Failed(Exception):
    pass


def _expect(kind: str, reply, status: int | tuple[int, ...]) -> None:  # type: ignore[no-untyped-def]
    wanted = status if isinstance(status, tuple) else (status,)
    if reply.status not in wanted:
        raise _Failed(f"{kind}: HTTP {reply.status} {reply.body[:200]!r}")


def _cycle(client, terminal: SimTerminal, record) -> None:  # type: ignore[no-untyped-def]
    """list → download → ack → upload → receipt; raises _Failed on anything unexpected."""
    reply = record("list", lambda: client.get("/api/v1/batches?all=1"))
    _expect("list", reply, 200)
    batches = reply.json()["batches"]
    if not batches:
        raise _Failed("list: no batch for this municipality")
    for batch in batches:
        reply = record("download", lambda b=batch: client.get(b["file"]))
        _expect("download", reply, 200)
        if hashlib.sha256(reply.body).hexdigest() != batch["sha256"]:
            raise _Failed(f"download: {batch['batch_id']} does not match its SHA-256")
        reply = record(
            "ack", lambda b=batch: client.post_json(f"{b['file']}/ack", {"sha256": b["sha256"]})
        )
        _expect("ack", reply, 200)
    data = Path(terminal.upload_path).read_bytes()
    headers = {
        "Content-Type": "application/octet-stream",
        "Renkei-File-Name": quote(Path(terminal.upload_path).name),
    }
    reply = record("upload", lambda: client.post("/api/v1/uploads", data, headers=headers))
    _expect("upload", reply, (200, 201))
    statement = reply.json()["statement"]
    if statement["file_error"] or statement["rejected"]:
        raise _Failed(
            f"upload: refused records {statement['rejected'][:1]} {statement['file_error']}"
        )
    if len(statement["accepted"]) + len(statement["duplicates"]) != terminal.upload_records:
        raise _Failed(
            f"upload: {len(statement['accepted'])} accepted, expected {terminal.upload_records}"
        )
    location = reply.headers.get("location", "")
    reply = record("receipt", lambda: client.get(location))
    _expect("receipt", reply, 200)
    if reply.json()["statement"]["upload_id"] != statement["upload_id"]:
        raise _Failed("receipt: another upload's receipt")


def _floor(client, _terminal: SimTerminal, record) -> None:  # type: ignore[no-untyped-def]
    for _ in range(CYCLE_REQUESTS):
        reply = record("floor", lambda: client.get("/api/v1/time", sign=False))
        _expect("floor", reply, 200)


def _run_terminal(host: str, port: int, ca_file: str, terminal: SimTerminal, mode: str, t0: float):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.server.client import SigningClient

    samples: list[tuple[str, float]] = []

    def record(kind: str, call):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        result = call()
        samples.append((kind, time.perf_counter() - started))
        return result

    began = time.time() - t0
    error = None
    client = SigningClient(
        host,
        port,
        ca_file=ca_file,
        key=Ed25519PrivateKey.from_private_bytes(terminal.private_key),
        key_id=terminal.terminal_id,
        agent_version="renkei-bench/1",
        timeout=TIMEOUT,
    )
    try:
        record("tls_connect", lambda: client._connection().connect())
        (_floor if mode == "floor" else _cycle)(client, terminal, record)
    except _Failed as exc:
        error = f"{terminal.terminal_id}: {exc}"
    except Exception as exc:  # a transport failure is an error of the run, not of the benchmark
        error = f"{terminal.terminal_id}: {type(exc).__name__}: {exc}"
    finally:
        client.close()
    return began, time.time() - t0, samples, error


# --- one worker process ----------------------------------------------------------------------


def _worker(job: dict) -> dict:
    """Run one share of the fleet; ``job`` comes from :func:`run_fleet` (pickled)."""
    import tests.server.client  # noqa: F401  (imported before "ready", so t0 is not spent on it)

    print("ready", flush=True)
    t0 = float(sys.stdin.readline())
    queue = deque(sorted(job["terminals"], key=lambda t: t.offset))
    lock = threading.Lock()
    results: list = []

    def loop() -> None:
        while True:
            with lock:
                if not queue:
                    return
                terminal = queue.popleft()
            delay = t0 + terminal.offset - time.time()
            if delay > 0:
                time.sleep(delay)
            outcome = _run_terminal(
                job["host"], job["port"], job["ca_file"], terminal, job["mode"], t0
            )
            with lock:
                results.append((terminal.offset, *outcome))

    pool = [threading.Thread(target=loop, daemon=True) for _ in range(max(1, job["threads"]))]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"results": results, "cpu": usage.ru_utime + usage.ru_stime}


def run_fleet(
    host: str,
    port: int | Sequence[int],
    ca_file: Path,
    terminals: Sequence[SimTerminal],
    *,
    processes: int = 2,
    threads: int = 16,
    mode: str = "cycle",
) -> FleetRun:
    """Run every terminal once (``mode`` "cycle", or "floor" for the floor baseline).

    The workers are separate interpreters (``python -m bench.loadgen JOB OUT``),
    not ``multiprocessing`` children: nothing of this process is inherited,
    and it works the same under pytest, ``python -m bench`` or a script.
    Several ports are several app servers behind a load balancer: worker
    *n* sends its terminals to port *n* mod their count (a balancer that keeps
    a terminal on one server for its connection, as a TCP balancer does).
    """
    ports = [port] if isinstance(port, int) else list(port)
    if not ports or processes % len(ports):
        raise ValueError(f"{processes} worker processes cannot share {len(ports)} server(s) evenly")
    shares: list[list[SimTerminal]] = [[] for _ in range(processes)]
    for index, terminal in enumerate(sorted(terminals, key=lambda t: t.offset)):
        shares[index % processes].append(terminal)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    with tempfile.TemporaryDirectory(prefix="renkei-loadgen-") as temp:
        workers = []
        try:
            for number, share in enumerate(shares):
                job = Path(temp) / f"job-{number}.pickle"
                out = Path(temp) / f"out-{number}.pickle"
                job.write_bytes(
                    pickle.dumps(
                        {
                            "host": host,
                            "port": ports[number % len(ports)],
                            "ca_file": str(ca_file),
                            "terminals": share,
                            "threads": threads,
                            "mode": mode,
                        }
                    )
                )
                process = subprocess.Popen(
                    [sys.executable, "-m", "bench.loadgen", str(job), str(out)],
                    cwd=root,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                workers.append((process, out))
            for process, _out in workers:
                assert process.stdout is not None
                if process.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"a load-generator worker did not start ({process.wait()})")
            t0 = time.time() + 0.2
            for process, _out in workers:
                assert process.stdin is not None
                process.stdin.write(f"{t0!r}\n")
                process.stdin.flush()
            outcomes: list = []
            cpu = 0.0
            for process, out in workers:
                if process.wait() != 0 or not out.exists():
                    raise RuntimeError(
                        f"a load-generator worker failed (exit {process.returncode})"
                    )
                done = pickle.loads(out.read_bytes())
                outcomes.extend(done["results"])
                cpu += done["cpu"]
        finally:
            for process, _out in workers:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                for pipe in (process.stdin, process.stdout):
                    if pipe is not None:
                        pipe.close()
    kinds = FLOOR_KINDS if mode == "floor" else KINDS
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    errors: list[str] = []
    for _offset, _began, _ended, measured, error in outcomes:
        for kind, seconds in measured:
            samples.setdefault(kind, []).append(seconds)
        if error:
            errors.append(error)
    return FleetRun(
        terminals=len(terminals),
        seconds=max((o[2] for o in outcomes), default=0.0),
        first_start=min((o[1] for o in outcomes), default=0.0),
        last_start=max((o[1] for o in outcomes), default=0.0),
        max_lateness=max((o[1] - o[0] for o in outcomes), default=0.0),
        samples=samples,
        errors=errors,
        failed_terminals=len(errors),
        client_cpu_seconds=cpu,
        processes=processes,
        threads=threads,
    )


def main(argv: list[str]) -> int:
    """Worker entry point: ``python -m bench.loadgen JOB.pickle OUT.pickle``."""
    job_path, out_path = argv
    result = _worker(pickle.loads(Path(job_path).read_bytes()))
    Path(out_path).write_bytes(pickle.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
