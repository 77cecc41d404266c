"""The docs stay current with the code: every column and every problem code is documented."""

from __future__ import annotations

import re
from pathlib import Path

from common.items import MINISTRY, MUNICIPALITY, columns_for

ROOT = Path(__file__).resolve().parent.parent
FORMAT = (ROOT / "docs" / "format.md").read_text(encoding="utf-8")


def test_every_column_is_documented():
    for direction in (MINISTRY, MUNICIPALITY):
        for column in columns_for(direction):
            if column.startswith("old_"):
                continue
            assert f"`{column}`" in FORMAT, column


def test_every_problem_code_is_documented():
    sources = [
        ROOT / "common" / name
        for name in ("validation.py", "noticefile.py", "lasdec.py", "cardnumber.py")
    ]
    found = set()
    for source in sources:
        found |= set(
            re.findall(
                r'"((?:file|row|item|date|code|lasdec|card_number|name|address|card|'
                r"householder|period|text|record_id|pattern|column|change_fact|"
                r'change_reason)\.[a-z_]+)"',
                source.read_text(encoding="utf-8"),
            )
        )
    assert len(found) > 30
    missing = sorted(code for code in found if f"`{code}`" not in FORMAT and code not in FORMAT)
    assert missing == []


def test_readme_names_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme


def _commands(group, prefix=()):  # type: ignore[no-untyped-def]
    import click

    for name, command in group.commands.items():
        path = (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, path)
        else:
            yield path, command


def test_every_command_has_help_with_an_example():
    """As in sqlite-utils: a command without help (and an example) fails the build."""
    from appliance.agent.cli import main as agent
    from common.cli import main as fmt
    from provisioning.cli import main as provision
    from server.cli import main as server

    missing = []
    for program, group in (
        ("renkei-format", fmt),
        ("renkei-server", server),
        ("renkei-agent", agent),
        ("renkei-provision", provision),
    ):
        for path, command in _commands(group):
            text = command.help or ""
            if "Example" not in text and "例" not in text:
                missing.append(" ".join((program, *path)))
    assert missing == []
