"""Writing one address entry into the chip — a MODEL of the write, not the ministry's protocol.

The ministry publishes how to *read* the address block (generation 1
DF2/EF01: D2 write date, D3 local government code, D4 address), not how a
municipality writes it. This models the write so the counter workflow, its
checks and its failure handling exist now; a deployment puts the real
command set and key device in its place (docs/card-write.md has the model).

* The block is fixed 364-byte slots ``D2 08 <date> D3 06 <code> D4 82 01 56
  <address 342>``, unused = value bytes 00; a slot is an entry when its date
  is a calendar date as 8 digits, else (non-zero bytes) a partial entry.
* The new entry goes into the first slot that is not an entry. Code and
  address are written first, the date **last**: until its last byte is on
  the card the slot is no entry (a half-written date holds 00 bytes), and
  running the same write again completes it.
* Card-number authentication, the key provider's write session (``80 84``,
  ``80 82``), ``84 D6`` WRITE BINARY under secure messaging in chunks of at
  most 160 bytes, then the whole block is read back and compared.

Address text is stored as Shift_JIS of JIS X 0201/0208 with cp932 code
points (what the read side decodes); anything else — vendor extensions
(①, 髙), user-defined or control characters, and characters that would read
back as another (− U+2212 → － U+FF0D) — is refused by name, never replaced.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from appliance.agent.card import apdu, crypto, session
from appliance.agent.card.apdu import CardError
from appliance.agent.card.keyprovider import KeyProvider, KeyProviderError, WriteSession
from appliance.agent.card.session import CardType, Transport
from common import lasdec as lasdec_codes

__all__ = [
    "ADDRESS_BYTES",
    "SLOT_BYTES",
    "AddressInputError",
    "NewEntry",
    "Slot",
    "WriteError",
    "WritePlan",
    "WriteResult",
    "card_type_dict",
    "encode_address",
    "execute_write",
    "parse_slots",
    "plan_write",
    "prepare_entry",
    "slot_bytes",
    "write_address",
]

ADDRESS_BYTES = 342
_D2 = bytes.fromhex("D208")
_D3 = bytes.fromhex("D306")
_D4 = bytes.fromhex("D4820156")
_DATE_AT, _LASDEC_AT, _ADDRESS_AT = 2, 12, 22
SLOT_BYTES = _ADDRESS_AT + ADDRESS_BYTES  # 364
_BODY_AT = 10  # D3 ‖ D4 start: written before the D2 date
CHUNK_BYTES = 160  # plaintext per WRITE BINARY: 160 → 87 81 B1 01 <176> + 8E 08 <8>, a short APDU

# Lead bytes of JIS X 0208 in Shift_JIS: rows 1–8 (81–84), 16–84 (88–9F, E0–EA).
# Left out: 87 (NEC row 13), ED–EE (NEC-selected IBM), F0–F9 (user-defined), FA–FC (IBM).
_JIS_X_0208_LEADS = frozenset([*range(0x81, 0x85), *range(0x88, 0xA0), *range(0xE0, 0xEB)])

FREE, PARTIAL, ENTRY = "free", "partial", "entry"
NOT_WRITTEN, PARTIAL_POSSIBLE, WRITTEN_UNVERIFIED, MISMATCH = (
    "not_written",
    "partial_possible",
    "written_unverified",
    "mismatch",
)


class AddressInputError(CardError):
    """What was asked to be written is not writable (checked before the card is touched).

    Codes: ``card.bad_date``, ``card.bad_lasdec``, ``card.unencodable``,
    ``card.address_too_long``, ``card.empty_address``, ``card.bad_card_number``,
    ``card.date_before_last_entry``. The CLI exits 2: fix the input.
    """

    code = "card.bad_input"


class WriteError(CardError):
    """The write did not complete; ``write_state`` says what the card may now hold.

    ``write_state``: ``not_written`` (nothing reached the card),
    ``partial_possible`` (a write command was sent; the slot may hold a
    partial entry, which does not count as an entry and which running the
    same write again completes), ``written_unverified`` (every write was
    acknowledged but the read-back failed), ``mismatch`` (the read-back
    differs from what was written). ``slot`` is the 0-based target slot.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        message_ja: str,
        write_state: str,
        slot: int | None,
    ):
        super().__init__(message, code=code, message_ja=message_ja)
        self.write_state = write_state
        self.slot = slot

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "write_state": self.write_state, "slot": self.slot}


# --- input ------------------------------------------------------------------------------------


def _input_error(code: str, message: str, message_ja: str) -> AddressInputError:
    return AddressInputError(message, code=code, message_ja=message_ja)


def _char_problem(ch: str) -> tuple[str, str] | None:
    """None when ``ch`` can be stored; else (English, Japanese) reasons."""
    name = f"{ch!r} (U+{ord(ch):04X})"
    if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
        return (
            f"control character U+{ord(ch):04X} cannot be stored",
            f"制御文字(U+{ord(ch):04X})は書き込めません。",
        )
    try:
        raw = ch.encode("cp932")
    except UnicodeEncodeError:
        raw = b""
    ok = (len(raw) == 1 and (0x20 <= raw[0] <= 0x7E or 0xA1 <= raw[0] <= 0xDF)) or (
        len(raw) == 2 and raw[0] in _JIS_X_0208_LEADS
    )
    if not ok:
        return (
            f"{name} is not in JIS X 0208 / JIS X 0201, the character set of the card's "
            "address field; write it with a character the card can hold",
            f"「{ch}」(U+{ord(ch):04X}) はカードの住居地欄の文字(JIS X 0208)にない文字です。"
            "別の字体で入力してください。",
        )
    back = raw.decode("cp932")
    if back != ch:
        return (
            f"{name} would be stored as {back!r} (U+{ord(back):04X}); type {back!r} instead",
            f"「{ch}」(U+{ord(ch):04X}) はそのまま書き込めません。"
            f"「{back}」(U+{ord(back):04X}) で入力してください。",
        )
    return None


def encode_address(text: str) -> bytes:
    """The D4 value: Shift_JIS (cp932 code points) of JIS X 0201/0208 text, 00-padded to 342 bytes.

    Raises AddressInputError naming the first character that cannot be
    stored (``card.unencodable``), or when the text is empty or too long.
    """
    if not text:
        raise _input_error(
            "card.empty_address", "the address is empty", "住居地が入力されていません。"
        )
    for position, ch in enumerate(text, 1):
        problem = _char_problem(ch)
        if problem is not None:
            message, message_ja = problem
            raise _input_error(
                "card.unencodable",
                f"address character {position}: {message}",
                f"住居地の{position}文字目: {message_ja}",
            )
    raw = text.encode("cp932")
    if len(raw) > ADDRESS_BYTES:
        raise _input_error(
            "card.address_too_long",
            f"the address needs {len(raw)} bytes; the card's field holds {ADDRESS_BYTES} "
            f"({ADDRESS_BYTES // 2} full-width characters)",
            f"住居地が長すぎます({len(raw)}バイト。全角{ADDRESS_BYTES // 2}文字まで)。",
        )
    return raw.ljust(ADDRESS_BYTES, b"\x00")


def _parse_date(text: str) -> dt.date | None:
    if len(text) != 8 or not text.isascii() or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


@dataclass(frozen=True)
class NewEntry:
    """A checked entry to write: date YYYYMMDD, 6-digit local government code, encoded address."""

    write_date: str
    lasdec: str
    address: str
    address_raw: bytes = field(repr=False)

    @property
    def municipality(self) -> str:
        found = lasdec_codes.lookup(self.lasdec)
        return found.full_name if found else ""

    def to_dict(self) -> dict[str, str]:
        return {
            "write_date": self.write_date,
            "lasdec": self.lasdec,
            "municipality": self.municipality,
            "address": self.address,
        }


def prepare_entry(
    write_date: str, lasdec: str, address: str, *, today: dt.date | None = None
) -> NewEntry:
    """Check and encode what staff asked to write; raise AddressInputError naming what and why.

    ``today``: when given, a write date after it is refused (a typo, or a
    wrong clock).
    """
    date = _parse_date(write_date)
    if date is None:
        raise _input_error(
            "card.bad_date",
            f"write date {write_date!r} is not a date as YYYYMMDD (e.g. 20250401)",
            f"書込日 {write_date!r} は年月日8桁(例: 20250401)の正しい日付ではありません。",
        )
    if today is not None and date > today:
        raise _input_error(
            "card.bad_date",
            f"write date {write_date} is after today ({today:%Y%m%d})",
            f"書込日 {write_date} が今日({today:%Y%m%d})より後です。",
        )
    problems = lasdec_codes.validate(lasdec)
    why = {
        "lasdec.format": ("is not six ASCII digits", "6桁の数字ではありません"),
        "lasdec.check_digit": ("has a wrong check digit", "検査数字が合いません"),
        "lasdec.unknown": (
            "names no municipality in the local government code master",
            "該当する市区町村がありません",
        ),
    }
    found = lasdec_codes.lookup(lasdec) if not problems else None
    if found is not None and found.kind == "都道府県":
        problems = ["prefecture"]
        why["prefecture"] = ("is a prefecture's code", "都道府県のコードです")
    if problems:
        english, japanese = why[problems[0]]
        raise _input_error(
            "card.bad_lasdec",
            f"local government code {lasdec!r} {english}",
            f"市区町村コード {lasdec!r} は{japanese}。",
        )
    return NewEntry(date.strftime("%Y%m%d"), lasdec, address, encode_address(address))


# --- the block --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One slot of the model address block as found on the card."""

    index: int
    state: str  # FREE, PARTIAL or ENTRY
    raw: bytes = field(repr=False)

    @property
    def write_date(self) -> str:
        return self.raw[_DATE_AT : _LASDEC_AT - 2].decode("ascii", errors="replace")

    @property
    def lasdec(self) -> str:
        return self.raw[_LASDEC_AT : _ADDRESS_AT - 4].decode("ascii", errors="replace")

    @property
    def address(self) -> str:
        return session.AddressEntry("", "", self.raw[_ADDRESS_AT:]).address


def slot_bytes(entry: NewEntry) -> bytes:
    """The 364 bytes of a slot holding ``entry``."""
    return (
        _D2
        + entry.write_date.encode("ascii")
        + _D3
        + entry.lasdec.encode("ascii")
        + _D4
        + entry.address_raw
    )


def _bad_block(why: str) -> CardError:
    return CardError(
        f"the card's address block does not have the model layout: {why}",
        code="card.bad_address_block",
        message_ja="カードの住居地欄の形式が想定と異なります。書込みはできません。",
    )


def parse_slots(block: bytes) -> list[Slot]:
    """Split the block into slots and classify each; refuse a block that is not the model layout."""
    if not block or len(block) % SLOT_BYTES:
        raise _bad_block(f"{len(block)} bytes is not a whole number of {SLOT_BYTES}-byte slots")
    slots = []
    for index in range(len(block) // SLOT_BYTES):
        raw = block[index * SLOT_BYTES : (index + 1) * SLOT_BYTES]
        if (
            raw[:2] != _D2
            or raw[_BODY_AT : _BODY_AT + 2] != _D3
            or raw[_ADDRESS_AT - 4 : _ADDRESS_AT] != _D4
        ):
            raise _bad_block(f"slot {index + 1} does not start D2 08 … D3 06 … D4 82 01 56")
        date = raw[_DATE_AT:_BODY_AT]
        lasdec = raw[_LASDEC_AT : _ADDRESS_AT - 4]
        values = date + lasdec + raw[_ADDRESS_AT:]
        if _parse_date(date.decode("latin-1")) and lasdec.isdigit():
            state = ENTRY
        elif not any(values):
            state = FREE
        else:
            state = PARTIAL
        slots.append(Slot(index, state, raw))
    return slots


def _target(slots: list[Slot]) -> int | None:
    """Index of the first slot that is not an entry (None: full); later slots must be free."""
    for slot in slots:
        if slot.state != ENTRY:
            later = [s.index + 1 for s in slots[slot.index + 1 :] if s.state != FREE]
            if later:
                raise _bad_block(f"slot {later[0]} is in use after unused slot {slot.index + 1}")
            return slot.index
    return None


# --- the card ---------------------------------------------------------------------------------


def _ok(transport: Transport, command: bytes, what: str) -> bytes:
    return apdu.check_status(transport.transmit(command), what)


def _read_block(transport: Transport) -> bytes:
    _ok(transport, apdu.select_df(apdu.AID_DF2), "SELECT DF2")
    return _ok(
        transport,
        apdu.read_binary(session.SFI_GEN1_ADDRESS, 0, extended=True),
        "READ BINARY address",
    )


def write_challenge() -> bytes:
    """MODEL WRITE CHALLENGE: 80 84 00 00 08 → the card's 8-byte challenge."""
    return bytes.fromhex("8084000008")


def write_authenticate(data: bytes) -> bytes:
    """MODEL WRITE AUTHENTICATE: 80 82 00 00 10 <RND.IFD ‖ terminal cryptogram> 08."""
    if len(data) != 16:
        raise ValueError("WRITE AUTHENTICATE data must be 16 bytes")
    return bytes([0x80, 0x82, 0x00, 0x00, 0x10]) + data + b"\x08"


def write_binary_header(offset: int) -> bytes:
    """MODEL WRITE BINARY header 84 D6 with a 15-bit offset into the address block."""
    if not 0 <= offset < 0x8000:
        raise ValueError("offset out of range")
    return bytes([0x84, 0xD6]) + offset.to_bytes(2, "big")


def card_type_dict(card_type: CardType) -> dict[str, Any]:
    """The card type as in CardRead.to_dict (docs/card.md)."""
    return {
        "generation": card_type.generation,
        "kind": card_type.kind,
        "specified": card_type.specified,
        "code": card_type.code,
    }


@dataclass(frozen=True)
class WritePlan:
    """What plan_write found on the card and what execute_write will do."""

    card_type: CardType
    card_number: str = field(repr=False)
    entry: NewEntry
    block: bytes = field(repr=False)
    slots: list[Slot]
    target: int | None  # None: the block is full (only when already_written)
    already_written: bool

    @property
    def entries(self) -> list[Slot]:
        return [s for s in self.slots if s.state == ENTRY]

    @property
    def completes_partial(self) -> bool:
        return self.target is not None and self.slots[self.target].state == PARTIAL


@dataclass(frozen=True)
class WriteResult:
    """The outcome: where the entry is and whether this run wrote it."""

    plan: WritePlan
    slot: int
    written: bool
    key_provider: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "card_type": card_type_dict(self.plan.card_type),
            "entry": self.plan.entry.to_dict(),
            "slot": self.slot + 1,
            "slots": len(self.plan.slots),
            "written": self.written,
            "already_written": self.plan.already_written,
            "completed_partial_entry": self.plan.completes_partial and self.written,
            "verified": True,
            "key_provider": self.key_provider,
        }


def plan_write(transport: Transport, card_number: str, entry: NewEntry) -> WritePlan:
    """Read the card type, authenticate with the card number, read the block, choose the slot.

    Raises CardError: ``card.address_block_full``, ``card.bad_address_block``,
    ``card.specified_not_supported``, the read side's errors (wrong card
    number, removed, …); AddressInputError ``card.date_before_last_entry``.
    Nothing is written.
    """
    try:
        number = crypto.check_card_number(card_number).decode("ascii")
    except CardError:
        raise _input_error(
            "card.bad_card_number",
            "the card number must be 12 letters and digits (two letters, eight digits, two letters)",
            "在留カード等番号は英数字12文字で入力してください(例: AB12345678CD)。",
        ) from None
    card_type = session.read_card_type(transport)
    if card_type.specified:
        raise CardError(
            f"card type {card_type.code}: writing to 特定在留カード-family cards is not modelled",
            code="card.specified_not_supported",
            message_ja="特定在留カード・特定特別永住者証明書への書込みには対応していません。",
        )
    session.authenticate(transport, card_type.generation, number)
    block = _read_block(transport)
    slots = parse_slots(block)
    new = slot_bytes(entry)
    entries = [s for s in slots if s.state == ENTRY]
    if entries and entries[-1].raw == new:
        return WritePlan(card_type, number, entry, block, slots, entries[-1].index, True)
    if entries and entries[-1].write_date > entry.write_date:
        raise _input_error(
            "card.date_before_last_entry",
            f"write date {entry.write_date} is before the card's last entry "
            f"({entries[-1].write_date})",
            f"書込日 {entry.write_date} がカードの最後の記載({entries[-1].write_date})より前です。",
        )
    target = _target(slots)
    if target is None:
        raise CardError(
            f"the card's address block is full ({len(slots)} entries); nothing was written",
            code="card.address_block_full",
            message_ja=(
                f"カードの住居地欄({len(slots)}欄)がすべて使われています。書き込めません"
                "(券面の裏面への記載などの対応をしてください)。"
            ),
        )
    return WritePlan(card_type, number, entry, block, slots, target, False)


_STATE_TEXT = {
    NOT_WRITTEN: ("nothing was written to the card", "カードには何も書き込まれていません。"),
    PARTIAL_POSSIBLE: (
        "the card may hold a partly written entry in slot {slot}; it does not count as an "
        "entry (its date is written last); put the card back and run the same command again "
        "to complete it",
        "書込みが途中で中断しました({slot}欄目)。カードを置き直して、同じ内容でもう一度"
        "実行してください(中断した書込みを完了します)。",
    ),
    WRITTEN_UNVERIFIED: (
        "the entry was written to slot {slot} but could not be read back; put the card back "
        "and run the same command again to check it",
        "書き込みましたが確認ができませんでした({slot}欄目)。カードを置き直して、同じ内容で"
        "もう一度実行してください(確認します)。",
    ),
}


def _failed(exc: CardError, state: str, slot: int) -> WriteError:
    english, japanese = _STATE_TEXT[state]
    # the reader's "put the card back and try again" is said again, more precisely, by the state
    first_ja = (
        "通信中にカードが取り外されました。" if exc.code == "card.removed" else exc.message_ja
    )
    return WriteError(
        f"{exc.message}; {english.format(slot=slot + 1)}",
        code=exc.code,
        message_ja=f"{first_ja}{japanese.format(slot=slot + 1)}",
        write_state=state,
        slot=slot,
    )


def _authenticate_write(transport: Transport, plan: WritePlan, provider: KeyProvider):
    challenge = _ok(transport, write_challenge(), "WRITE CHALLENGE")
    write_session = provider.open_write_session(plan.card_number, challenge)
    try:
        answer = transport.transmit(write_authenticate(write_session.terminal_cryptogram()))
        if answer.sw == 0x6300:
            raise CardError(
                "WRITE AUTHENTICATE: the card refused the terminal's cryptogram: the key "
                "provider does not hold this card's write key (SW 6300)",
                code="card.write_auth_failed",
                message_ja=(
                    "カードが書込み用の認証を拒否しました。鍵がこのカードに合っていません。"
                ),
            )
        write_session.check_card_cryptogram(apdu.check_status(answer, "WRITE AUTHENTICATE"))
    except BaseException:
        write_session.close()
        raise
    return write_session


def _send_writes(
    transport: Transport, write_session: WriteSession, offset: int, data: bytes
) -> None:
    for start in range(0, len(data), CHUNK_BYTES):
        chunk = data[start : start + CHUNK_BYTES]
        header = write_binary_header(offset + start)
        body = write_session.wrap_command(header, chunk)
        answer = _ok(
            transport, header + bytes([len(body)]) + body + b"\x00", "WRITE BINARY address"
        )
        write_session.check_response(answer)


def execute_write(transport: Transport, plan: WritePlan, provider: KeyProvider) -> WriteResult:
    """Authenticate with the key provider, write the slot (date last), read back and compare.

    Must follow plan_write on the same connection (the card-number
    authentication is still in force). Raises WriteError saying what the card
    may hold when the card is pulled, refuses or reads back differently;
    KeyProviderError when the provider cannot be used (before the card is
    touched).
    """
    if plan.already_written:
        return WriteResult(plan, plan.target or 0, False, provider.description)
    assert plan.target is not None
    provider.ensure_ready()
    slot = plan.target
    new = slot_bytes(plan.entry)
    base = slot * SLOT_BYTES
    expected = plan.block[:base] + new + plan.block[base + SLOT_BYTES :]
    state = NOT_WRITTEN
    try:
        write_session = _authenticate_write(transport, plan, provider)
        try:
            state = PARTIAL_POSSIBLE
            _send_writes(transport, write_session, base + _BODY_AT, new[_BODY_AT:])
            _send_writes(transport, write_session, base, new[:_BODY_AT])
        finally:
            write_session.close()
        state = WRITTEN_UNVERIFIED
        back = _read_block(transport)
    except KeyProviderError:
        raise
    except CardError as exc:
        raise _failed(exc, state, slot) from exc
    if back != expected:
        raise _mismatch(back, expected, slot)
    return WriteResult(plan, slot, True, provider.description)


def _mismatch(back: bytes, expected: bytes, slot: int) -> WriteError:
    if len(back) != len(expected):
        where = f"the block is {len(back)} bytes, expected {len(expected)}"
    else:
        first = next(i for i, (a, b) in enumerate(zip(back, expected, strict=True)) if a != b)
        where = f"first difference at byte {first} (slot {first // SLOT_BYTES + 1})"
    try:
        state = parse_slots(back)[slot].state
    except (CardError, IndexError):
        state = "unreadable"
    return WriteError(
        f"the address block read back after writing differs from what was written: {where}; "
        f"slot {slot + 1} now reads as {state!r}. Keep the card, run the command again; if it "
        "differs again, the card may be damaged",
        code="card.write_mismatch",
        message_ja=(
            "書込み後の読み出し内容が書き込んだ内容と一致しません。カードを返却せず、"
            "もう一度実行してください。再び一致しない場合はカードの障害の可能性があります。"
        ),
        write_state=MISMATCH,
        slot=slot,
    )


def write_address(
    transport: Transport, card_number: str, entry: NewEntry, provider: KeyProvider
) -> WriteResult:
    """plan_write then execute_write, without a confirmation step in between."""
    provider.ensure_ready()
    return execute_write(transport, plan_write(transport, card_number, entry), provider)
