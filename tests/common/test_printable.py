"""common.printable: what a terminal would act on is shown as an escape; the rest as it is."""

from __future__ import annotations

import json
import unicodedata

import pytest

from common.printable import is_printable, printable, printable_json


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("renkei-agent/1.0", "renkei-agent/1.0"),
        ("千代田区-20261127.csv", "千代田区-20261127.csv"),
        ("辻󠄃", "辻󠄃"),  # a variation selector is a mark (Mn), part of the character
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("1.0\x9b2J", "1.0\\x9b2J"),  # C1 CSI
        ("a\x7fb", "a\\x7fb"),
        ("a\x85b", "a\\x85b"),  # NEL
        ("evil\u202ecsv.exe", "evil\\u202ecsv.exe"),
        ("\u061c\u200e\u200f\u2066\u2069", "\\u061c\\u200e\\u200f\\u2066\\u2069"),
        ("a\u200bb\ufeff", "a\\u200bb\\ufeff"),
        ("a\u2028b\u2029", "a\\u2028b\\u2029"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("lone\udcff", "lone\\udcff"),
        ("tab\tline\n", "tab\\x09line\\x0a"),
    ],
)
def test_printable(text: str, shown: str):
    assert printable(text) == shown
    assert is_printable(shown)
    assert is_printable(text) is (text == shown)


def test_keep_is_for_the_callers_own_layout():
    assert printable("a\tb\n\x1b", keep="\t\n") == "a\tb\n\\x1b"


def test_every_unsafe_character_is_escaped():
    """Exhaustive over the code space: nothing of an unsafe category survives."""
    text = "".join(chr(point) for point in range(0x110000) if not 0xD800 <= point <= 0xDFFF)
    shown = printable(text)
    assert not [c for c in shown if unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"}]


def test_printable_json_parses_back_to_the_same_value():
    value = {"v": "1.0\x9b\x1b\x7f\u202e\U000e0041\udcff\u2028日本", "k": ["\x00", "ok"]}
    text = json.dumps(value, ensure_ascii=False, indent=1)
    shown = printable_json(text)
    assert json.loads(shown) == value
    assert not [
        c for c in shown if unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"} and c != "\n"
    ]
    assert "日本" in shown and "\\u009b" in shown and "\\udb40\\udc41" in shown
