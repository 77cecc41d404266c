"""The image's Debian package list (``packages.txt``): every package with the reason it is there.

A package list that only names packages grows by accretion; one that must say
why each is there can be reviewed line by line.  So a line without a reason is
an error, not a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import EXIT_USAGE, BuildError

__all__ = ["PACKAGES_FILE", "Package", "check_name", "load_packages", "parse_packages"]

PACKAGES_FILE = Path(__file__).with_name("packages.txt")

# Debian policy 5.6.1: lower case letters, digits, + - . ; at least two characters.
_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


@dataclass(frozen=True)
class Package:
    name: str
    reason: str
    line: int


def check_name(name: str) -> str:
    """``name`` if it is a valid Debian package name, else :class:`BuildError` naming it."""
    if not _NAME.match(name):
        raise BuildError(
            f"{name!r} is not a Debian package name (lower case letters, digits, + - .)",
            code="build.config",
            exit_status=EXIT_USAGE,
        )
    return name


def parse_packages(text: str, *, source: str = "packages.txt") -> list[Package]:
    """Parse ``name  # reason`` lines; whole-line comments and blank lines are skipped.

    Raises :class:`BuildError` (``build.config``) naming the line for a bad
    name, a missing reason or a package listed twice.
    """
    packages: list[Package] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition("#")
        name, reason = name.strip(), reason.strip()
        where = f"{source} line {number}"
        if " " in name or "\t" in name:
            raise BuildError(
                f"{where}: one package per line, got {name!r}",
                code="build.config",
                exit_status=EXIT_USAGE,
            )
        try:
            check_name(name)
        except BuildError as exc:
            raise BuildError(
                f"{where}: {exc.message}", code="build.config", exit_status=EXIT_USAGE
            ) from None
        if not reason:
            raise BuildError(
                f"{where}: {name} has no reason; write it after '#' on the same line",
                code="build.config",
                exit_status=EXIT_USAGE,
            )
        if name in seen:
            raise BuildError(
                f"{where}: {name} is already listed on line {seen[name]}",
                code="build.config",
                exit_status=EXIT_USAGE,
            )
        seen[name] = number
        packages.append(Package(name, reason, number))
    if not packages:
        raise BuildError(f"{source} lists no package", code="build.config", exit_status=EXIT_USAGE)
    return packages


def load_packages(path: Path = PACKAGES_FILE) -> list[Package]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BuildError(
            f"cannot read the package list {path}: {exc.strerror}",
            code="build.config",
            exit_status=EXIT_USAGE,
        ) from None
    return parse_packages(text, source=str(path))
