"""`make demo`: one day's exchange on an embedded sample day, told step by step.

What runs is real: the `renkei-server` commands, the server under gunicorn
with TLS on loopback, signed HTTPS requests.  The terminal's side is played by
a stand-in (the signing client of the server's integration tests) until the
terminal agent (appliance/agent/) lands; it does what the agent will do:
enroll, list, download, verify, place atomically, acknowledge, upload.

Everything goes to ``demo-output/`` (or the folder given), made anew each run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from common import statement  # noqa: E402
from common.atomicwrite import write_bytes  # noqa: E402
from common.items import MINISTRY, MUNICIPALITY  # noqa: E402
from common.noticefile import encode_notice_file, format_json_header, format_json_record  # noqa: E402
from common.synthetic import SampleFactory  # noqa: E402
from tests.server.client import GunicornProcess  # noqa: E402 - stand-in terminal until the agent lands

DAY = date(2026, 11, 27)
MUNICIPALITIES = {"131016": 40, "011011": 25, "221384": 0}  # 千代田区, 札幌市中央区, 浜松市中央区
BIN = Path(sys.executable).parent


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
    server_command(env, "init", "--dev-tls")

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

    say("\n5. The server runs under gunicorn with TLS; the terminal's evening run talks to it")
    folders = out / "terminal-131016"
    for name in ("inbox", "outbox", "sent"):
        (folders / name).mkdir(parents=True)
    with GunicornProcess(data, log_path=out / "gunicorn.log", workers=2) as server:
        say(f"     | listening on {server.client().origin}")
        key = Ed25519PrivateKey.generate()
        with server.client(agent_version="renkei-demo-terminal") as client:
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
            say(
                f"     | enrolled terminal {enrolled['terminal_id']} for {enrolled['municipality']}"
            )
            server_key = statement.public_key_from_text(enrolled["server_key"]["public_key"])
            client.key, client.key_id = key, enrolled["terminal_id"]

            batches = client.get("/api/v1/batches").json()["batches"]
            for batch in batches:
                manifest = client.get(f"/api/v1/batches/{batch['batch_id']}/manifest").json()
                body = statement.verify(manifest, server_key)
                payload = client.get(f"/api/v1/batches/{batch['batch_id']}").body
                assert hashlib.sha256(payload).hexdigest() == body["sha256"], "hash mismatch"
                name = f"ministry-{body['lasdec']}-{body['sequence']:06d}.csv"
                write_bytes(folders / "inbox" / name, payload)
                ack = client.post_json(
                    f"/api/v1/batches/{batch['batch_id']}/ack", {"sha256": body["sha256"]}
                )
                say(
                    f"     | batch #{body['sequence']} ({body['records']} records, signature ok, sha256 ok) "
                    f"→ inbox/{name}, acknowledged ({ack.status})"
                )

            records = list(factory.day_of(MUNICIPALITY, "131016", 12))
            records[3] = records[3].with_values(address_code="131017")
            upload = encode_notice_file(MUNICIPALITY, records)
            write_bytes(folders / "outbox" / "municipality-131016.csv", upload)
            reply = client.post(
                "/api/v1/uploads", upload, headers={"Renkei-File-Name": "municipality-131016.csv"}
            )
            receipt = statement.verify(reply.json(), server_key)
            again = client.post(
                "/api/v1/uploads", upload, headers={"Renkei-File-Name": "municipality-131016.csv"}
            )
            say(
                f"     | uploaded municipality-131016.csv: {len(receipt['accepted'])} accepted, "
                f"{len(receipt['rejected'])} rejected (receipt signed by the server; status {reply.status})"
            )
            for rejected in receipt["rejected"]:
                for problem in rejected["problems"]:
                    say(f"     |   rejected {rejected['record_id']}: {problem['message']}")
            say(
                f"     | sent again: status {again.status}, same receipt: {again.json() == reply.json()}"
            )
            write_bytes(
                folders / "sent" / "municipality-131016.receipt.json",
                json.dumps(reply.json(), ensure_ascii=False, indent=1).encode("utf-8"),
            )

    say("\n6. The ministry checks the fleet and exports what the municipalities sent")
    server_command(env, "status")
    exported = out / f"received-{DAY:%Y%m%d}.jsonl"
    server_command(env, "export", "-o", str(exported))
    say(
        f"\nOutputs are in {out}/ — the terminal's folders in {folders.name}/, "
        f"the server's data in server/, its log in gunicorn.log"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "demo-output"))
