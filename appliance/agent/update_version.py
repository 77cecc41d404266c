"""Release versions and target names, compared as PEP 440 says (the subset renkei releases use).

Why not ``packaging``: the agent's runtime has no other use for it, and the
releases we publish use a small part of PEP 440 — ``N(.N)*`` with an
optional pre-release (``a``/``b``/``rc``), ``.postN``, ``.devN`` and a
``+local`` label.  A version outside that subset is not "newer" or "older":
it is not a renkei release, and the updater ignores the target (and says
so), rather than guessing an order.

Target names follow the contract with the server (docs/updates.md):
``renkei-agent-<version>.tar.gz``, flat, no slashes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TARGET_PREFIX", "TARGET_SUFFIX", "Version", "target_name", "version_of_target"]

TARGET_PREFIX = "renkei-agent-"
TARGET_SUFFIX = ".tar.gz"

_VERSION = re.compile(
    r"""
    (?P<release>[0-9]+(?:\.[0-9]+)*)
    (?:(?P<pre_kind>a|b|rc)(?P<pre>[0-9]+))?
    (?:\.post(?P<post>[0-9]+))?
    (?:\.dev(?P<dev>[0-9]+))?
    (?:\+(?P<local>[a-z0-9]+(?:\.[a-z0-9]+)*))?
    """,
    re.VERBOSE,
)
_PRE_ORDER = {"a": 0, "b": 1, "rc": 2}
#: Characters the contract allows in a target's version (the server checks the same set).
_TARGET_VERSION = re.compile(r"[0-9A-Za-z.+-]{1,40}")


@dataclass(frozen=True)
class Version:
    """A parsed release version; instances order as PEP 440 orders them."""

    text: str
    key: tuple

    @classmethod
    def parse(cls, text: str) -> Version:
        """``"0.2.0"`` → Version; ValueError naming the text when it is not in the subset."""
        match = _VERSION.fullmatch(text)
        if match is None or len(text) > 40:
            raise ValueError(
                f"{text!r} is not a release version (N.N.N, optionally aN/bN/rcN, .postN, "
                ".devN, +local)"
            )
        release = tuple(int(part) for part in match["release"].split("."))
        while len(release) > 1 and release[-1] == 0:
            release = release[:-1]  # 1.0 == 1.0.0
        dev = int(match["dev"]) if match["dev"] is not None else None
        post = int(match["post"]) if match["post"] is not None else None
        if match["pre_kind"]:
            pre: tuple = (_PRE_ORDER[match["pre_kind"]], int(match["pre"]))
        elif dev is not None and post is None:
            pre = (-1,)  # 1.0.dev1 comes before 1.0a1
        else:
            pre = (9,)  # no pre-release: after every pre-release
        post_key: tuple = (-1,) if post is None else (post,)
        dev_key: tuple = (float("inf"),) if dev is None else (dev,)
        local = tuple(
            (1, int(part), "") if part.isdigit() else (0, 0, part)
            for part in (match["local"] or "").split(".")
            if part
        )
        return cls(text, (release, pre, post_key, dev_key, local))

    def __lt__(self, other: Version) -> bool:
        return self.key < other.key

    def __le__(self, other: Version) -> bool:
        return self.key <= other.key

    def __gt__(self, other: Version) -> bool:
        return self.key > other.key

    def __ge__(self, other: Version) -> bool:
        return self.key >= other.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.text


def target_name(version: str) -> str:
    """The repository's name for a release: ``renkei-agent-<version>.tar.gz``."""
    return f"{TARGET_PREFIX}{version}{TARGET_SUFFIX}"


def version_of_target(name: str) -> str | None:
    """The version in a target name of the contract's form, else None."""
    if not (name.startswith(TARGET_PREFIX) and name.endswith(TARGET_SUFFIX)):
        return None
    version = name[len(TARGET_PREFIX) : -len(TARGET_SUFFIX)]
    return version if _TARGET_VERSION.fullmatch(version) else None
