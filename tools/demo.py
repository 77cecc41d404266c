"""`make demo`: one day's exchange on an embedded sample day, told step by step.

What runs is real: the `renkei-server` commands, the server under gunicorn
with TLS on loopback, signed HTTPS requests.  The terminal's side is played by
a stand-in (the signing client of the server's integration tests) until the
terminal agent (appliance/agent/) lands; it does what the agent will do:
enroll, list, download, verify, place atomically, acknowledge, upload.

Everything goes to ``demo-output/`` (or the folder given), made anew each run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from common import statement  # noqa: E402
from common.atomicwrite import write_bytes  # noqa: E402
from common.items import MINISTRY, MUNICIPALITY  # noqa: E402
from common.noticefile import encode_notice_file, format_json_header, format_json_record  # noqa: E402
from common.synthetic import SampleFactory  # noqa: E402
from tests.agent.conftest import Chronyd, Dnsmasq  # noqa: E402 - the LGWAN's NTP and DNS on loopback
from tests.server.client import ServerProcess  # noqa: E402 - starts gunicorn and waits until it answers

DAY = date(2026, 11, 27)
MUNICIPALITIES = {"131016": 40, "011011": 25, "221384": 0}  # 千代田区, 札幌市中央区, 浜松市中央区
BIN = Path(sys.executable).parent
SERVER_NAME = "renkei.demo.test"  # the ministry server's name on the (simulated) LGWAN


def say(text: str = "") -> None:
    print(text, flush=True)


def server_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "renkei-server"), *args], env=env, capture_output=True, text=True, timeout=300
    )
    for line in (result.stdout + result.stderr).rstrip().splitlines():
        say(f"     | {line}")
    if result.returncode not in (0, 1):
        raise SystemExit(
            f"renkei-server {' '.join(args)} failed with exit code {result.returncode}"
        )
    return result


def agent_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "renkei-agent"), *args], env=env, capture_output=True, text=True, timeout=300
    )
    for line in (result.stdout + result.stderr).rstrip().splitlines():
        say(f"     | {line}")
    if result.returncode not in (0, 1):
        raise SystemExit(f"renkei-agent {' '.join(args)} failed with exit code {result.returncode}")
    return result


def main(out: Path) -> int:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data = out / "server"
    env = {**os.environ, "RENKEI_SERVER_DATA_DIR": str(data)}
    factory = SampleFactory(seed=20261127, day=DAY)
    say(f"== renkei demo: the daily exchange of {DAY:%Y-%m-%d} ==")

    say(
        "\n1. The ministry sets up its linkage server (database, signing key, municipality master, dev TLS)"
    )
    server_command(env, "init", "--dev-tls", "--hostname", SERVER_NAME)

    say("\n2. The issuance system's notices arrive in Unicode and are imported (one is bad)")
    notices = out / f"notices-{DAY:%Y%m%d}.jsonl"
    lines = [format_json_header(MINISTRY)]
    for code, count in MUNICIPALITIES.items():
        lines += [format_json_record(r) for r in factory.day_of(MINISTRY, code, count)]
    bad = next(factory.day_of(MINISTRY, "131016", 1)).with_values(birth_date="20100230")
    lines.append(format_json_record(type(bad)("M-BAD-0001", bad.pattern, bad.values)))
    notices.write_text("".join(lines), encoding="utf-8")
    server_command(env, "import", str(notices), "--date", DAY.isoformat())

    say(
        "\n3. After business hours the day is closed: one signed batch per municipality (empty ones too)"
    )
    server_command(env, "close-day", "--date", DAY.isoformat())

    say("\n4. A field technician gets an enrollment token for 千代田区 (131016)")
    token = json.loads(
        subprocess.run(
            [str(BIN / "renkei-server"), "terminal", "token", "--lasdec", "131016", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["token"]
    say("     | token issued (shown once to the technician; stored hashed)")

    say(
        "\n5. The server runs (gunicorn behind its nginx front, TLS); the terminal enrolls and its agent runs the evening sync"
    )
    terminal = out / "terminal-131016"
    root, state = terminal / "srv", terminal / "state"
    for folder in (root, state):
        folder.mkdir(parents=True, mode=0o750)
    ntp = Chronyd(out / "lgwan" / "chrony").start()
    dns = Dnsmasq(out / "lgwan" / "dnsmasq", {SERVER_NAME: ["127.0.0.1"]}).start()
    say(
        f"     | LGWAN NTP (chronyd) on {ntp.address}, LGWAN DNS (dnsmasq) on {dns.address} knows {SERVER_NAME}"
    )
    try:
        _evening(out, data, token, factory, root, state, terminal, ntp.address, dns.address)
    finally:
        ntp.stop()
        dns.stop()

    say("\n7. The ministry checks the fleet and exports what the municipalities sent")
    server_command(env, "status")
    exported = out / f"received-{DAY:%Y%m%d}.jsonl"
    server_command(env, "export", "-o", str(exported))
    say(
        f"\nOutputs are in {out}/ — the terminal in {terminal.name}/ (folders under srv/), "
        f"the server's data in server/, its logs in gunicorn.log and gunicorn-front.log"
    )
    return 0


def _evening(out, data, token, factory, root, state, terminal, ntp, dns) -> None:
    with ServerProcess(data, log_path=out / "gunicorn.log", workers=2) as server:
        origin = f"https://{SERVER_NAME}:{server.port}"
        say(f"     | the server listens on 127.0.0.1:{server.port}, known on LGWAN as {origin}")
        # Enrollment: what `renkei-provision enroll` will do on the appliance (issue 6).
        key = Ed25519PrivateKey.generate()
        key_path = state / "terminal-key.pem"
        write_bytes(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            mode=0o600,
        )
        with server.client(agent_version="renkei-provision-demo") as client:
            enrolled = client.post_json(
                "/api/v1/enroll",
                {
                    "token": token,
                    "public_key": statement.public_key_to_text(key.public_key()),
                    "agent_version": "demo",
                },
                key=key,
                key_id="enroll",
            ).json()
        say(f"     | enrolled terminal {enrolled['terminal_id']} for {enrolled['municipality']}")
        config = terminal / "agent.toml"
        config.write_text(
            f'''server_url = "{origin}"
lasdec = "131016"
terminal_id = "{enrolled["terminal_id"]}"
key_path = "{key_path}"
server_key = "{enrolled["server_key"]["public_key"]}"
ca_file = "{server.ca_file}"
folder_root = "{root}"
state_dir = "{state}"
settle_seconds = 0.0
dns_servers = ["{dns}"]
ntp_servers = ["{ntp}"]
''',
            encoding="utf-8",
        )
        agent_env = {**os.environ, "RENKEI_AGENT_CONFIG": str(config)}
        agent_command(agent_env, "sync", "--download-only")
        for placed in sorted((root / "inbox").iterdir()):
            say(f"     | inbox/{placed.name}: {placed.stat().st_size:,} bytes")

        say(
            "\n6. Staff drop their municipality notice file into the outbox; the agent sends it (one record is bad)"
        )
        good = list(factory.day_of(MUNICIPALITY, "131016", 12))
        write_bytes(
            root / "outbox" / f"municipality-131016-{DAY:%Y%m%d}.csv",
            encode_notice_file(MUNICIPALITY, good),
        )
        bad = list(factory.day_of(MUNICIPALITY, "131016", 5))
        bad[3] = bad[3].with_values(address_code="131017")
        write_bytes(
            root / "outbox" / f"municipality-131016-{DAY:%Y%m%d}-2.csv",
            encode_notice_file(MUNICIPALITY, bad),
        )
        agent_command(agent_env, "sync", "--upload-only")
        for folder in ("sent", "rejected"):
            for path in sorted((root / folder).iterdir()):
                say(f"     | {folder}/{path.name}")
        report = next((root / "rejected").glob("*.report.txt"), None)
        if report is not None:
            say("     | the Japanese report staff read for the rejected file:")
            for line in report.read_text(encoding="utf-8-sig").splitlines()[:14]:
                say(f"     |   {line}")
        agent_command(agent_env, "status")


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "demo-output"))
