"""Who may report a municipality notice (市町村通知): the municipality whose 住民票 it is about.

The spec (§1) defines the municipality notice as the municipality telling the
ministry that it recorded, removed or corrected a foreign resident's 住民票
(「外国人住民の住民票の記載、削除もしくは記載の修正情報を市町村から法務省へ」);
the law behind it (入管法 第61条の8の2) puts the duty on the head of the
municipality that made that change.  A 住民票 is kept by the municipality of
the person's address, so a record's reporting municipality is the one its
住居地／住所 names: the local government code in ``address_code`` (table 4.2.1
row 6, 「LASDEC コード含む」).  It is the one code every municipality-notice
pattern carries (【別紙】 row 12 is ● or ○ in all of A…AE and a…f); the
previous address (row 15) names where a person came from, which for a 転入 is
another municipality.  A 転出 (patterns E, I, N, S, V) removes the 住民票 of
the municipality being left and carries no previous address, so its 住居地 is
that municipality's too.

So a terminal reports only records whose ``address_code`` is its own code,
and a record naming any other is refused on its own (the rest of the file is
unaffected), with ``address.other_municipality``:

* another municipality's or another ward's code — the notice is not this
  municipality's to give (each files its own);
* the designated city's own code from one of its wards' terminals: in a
  designated city each ward keeps the 住民基本台帳 (住基法 第38条: 区を市と
  みなす), so the ward is the reporting unit and its code is the one to use —
  the mirror of how ministry notices are routed (``routing.not_receiving``
  refuses a city code there).

A missing or malformed ``address_code`` is left to the validator
(``item.missing``, ``lasdec.*``): nothing is known about the reporter then.
Pure: the municipality master is ``common.lasdec``'s.
"""

from __future__ import annotations

from . import lasdec
from .records import Record
from .validation import Problem

__all__ = ["OTHER_MUNICIPALITY", "reporting_problem"]

OTHER_MUNICIPALITY = "address.other_municipality"


def _named(code: str) -> str:
    entry = lasdec.lookup(code)
    return f"{code}（{entry.full_name}）" if entry is not None else code


def reporting_problem(record: Record, reporter: str) -> Problem | None:
    """The refusal of a municipality notice that ``reporter`` (a terminal's code) may not give.

    None when the record's ``address_code`` is ``reporter`` itself, or is
    missing or not a valid code (the validator reports those).
    """
    code = record.get("address_code")
    if not code or code == reporter or lasdec.validate(code):
        return None
    own = lasdec.lookup(reporter)
    if own is not None and own.parent == code:
        ja = (
            f"住居地の全国地方公共団体コード「{_named(code)}」は政令指定都市のコードです。"
            f"この端末は {_named(reporter)} の端末です。区のコード「{reporter}」を指定してください"
        )
        en = (
            f"address_code {code} is the designated city; this terminal is its ward {reporter}, "
            f"which keeps the residence records: use the ward's code {reporter}"
        )
    else:
        ja = (
            f"住居地の全国地方公共団体コード「{_named(code)}」はこの端末の団体"
            f"（{_named(reporter)}）ではありません。送信できるのは自団体が住民票を記載・消除・"
            f"修正した通知だけです（他団体の通知はその団体の端末から送信してください）"
        )
        en = (
            f"address_code {code} is not this terminal's municipality {reporter}: a terminal "
            "reports only notices about residence records its own municipality keeps"
        )
    return Problem(OTHER_MUNICIPALITY, "address", "address_code", ja, en)
