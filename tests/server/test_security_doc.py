"""docs/security.md stays true: its upload example is one the server accepts, and every test
its attack catalogue names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from server.api.uploads import _ACCEPTED_TYPES

ROOT = Path(__file__).resolve().parents[2]
SECURITY = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")


def _catalogue() -> list[list[str]]:
    section = SECURITY.split("## Attack catalogue", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[1:]]


def test_the_upload_example_is_one_the_server_accepts():
    """The example once showed Content-Type: text/csv, which the server answers with 415."""
    examples = [
        block
        for block in re.findall(r"```\n(.*?)```", SECURITY, flags=re.S)
        if block.startswith("POST /api/v1/uploads")
    ]
    assert examples, "docs/security.md shows no upload request"
    for block in examples:
        found = re.search(r"^Content-Type: *(\S+)", block, flags=re.M)
        assert found is not None and found.group(1) in _ACCEPTED_TYPES, found
        assert re.search(r"^Renkei-File-Name: ", block, flags=re.M)


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


def test_every_test_the_attack_catalogue_names_exists():
    rows = _catalogue()
    assert len(rows) >= 20
    missing = []
    for attack, _defence, tests in rows:
        named = re.findall(r"`(tests/[^`:]+\.py)::(test_\w+)`", tests)
        assert named, f"no test named for {attack!r}"
        for file, name in named:
            path = ROOT / file
            if not path.is_file() or name not in _tests_in(path):
                missing.append(f"{file}::{name}")
    assert missing == []


def test_the_catalogue_covers_the_issues_attacks():
    attacks = " ".join(row[0] for row in _catalogue())
    for word in (
        "replay",
        "clock",
        "coverage",
        "tampering",
        "another municipality",
        "traversal",
        "sizes",
        "revoked",
        "tokens",
        "lockout",
        "operator pages",
        "TLS versions",
        "leaks",
        "@authority",
        "file names",
        "Renkei-Agent-Version",
        "chunked",
        "made-up key ids",
        "reporting",
        "slow clients",
        "TLS suites",
        "small-order",
    ):
        assert word in attacks, word
