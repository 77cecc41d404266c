"""The PC/SC edge: find a reader, connect to the card (T=1), exchange APDUs.

The only module that imports pyscard, so everything above it can be tested
with a fake transport. pyscard's exceptions are turned into ``CardError``
with stable codes: no PC/SC service, no reader, no card, card removed.
"""

from __future__ import annotations

from appliance.agent.card.apdu import CardError, Response, parse_response

__all__ = ["CardConnection", "connect", "list_readers"]


def _pcsc_readers() -> list:
    from smartcard.pcsc.PCSCExceptions import EstablishContextException, ListReadersException
    from smartcard.System import readers

    try:
        return list(readers())
    except EstablishContextException as exc:
        raise CardError(
            "the PC/SC service (pcscd) is not running or not reachable",
            code="card.no_pcsc",
            message_ja="PC/SCサービス(pcscd)に接続できません。",
        ) from exc
    except ListReadersException as exc:
        if getattr(exc, "hresult", None) == 0x8010002E:  # SCARD_E_NO_READERS_AVAILABLE
            return []
        raise CardError(f"cannot list card readers: {exc}", code="card.no_pcsc") from exc


def list_readers() -> list[str]:
    """Names of the card readers PC/SC sees (empty when none is connected)."""
    return [str(r) for r in _pcsc_readers()]


class CardConnection:
    """An open T=1 connection to one card; transmit() returns a parsed Response."""

    def __init__(self, connection, reader_name: str):
        self._connection = connection
        self.reader_name = reader_name

    def transmit(self, apdu: bytes) -> Response:
        """Send one command APDU; follow 61xx with GET RESPONSE; map removal to CardError."""
        from smartcard.Exceptions import CardConnectionException

        try:
            data, sw1, sw2 = self._connection.transmit(list(apdu))
            out = bytes(data)
            while sw1 == 0x61:
                data, sw1, sw2 = self._connection.transmit([0x00, 0xC0, 0x00, 0x00, sw2])
                out += bytes(data)
        except CardConnectionException as exc:
            raise _removed_error(exc) from exc
        return parse_response(out + bytes([sw1, sw2]))

    def close(self) -> None:
        """Disconnect; never raises (the card may already be gone)."""
        _release(self._connection)

    def __enter__(self) -> CardConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _release(connection) -> None:
    """Disconnect and release the PC/SC context now, never raising.

    pyscard otherwise releases in ``__del__`` and raises there when pcscd is
    gone, which surfaces as an unraisable-exception warning far from here.
    """
    try:
        connection.release()
    except Exception:  # the card or the service may already be gone
        pass


def _removed_error(exc: BaseException) -> CardError:
    return CardError(
        f"the card was removed or reset during the exchange ({exc})",
        code="card.removed",
        message_ja="通信中にカードが取り外されました。カードを置き直して、もう一度実行してください。",
    )


def connect(reader_name: str | None = None) -> CardConnection:
    """Connect with T=1 to the card on the named reader (or the only/first reader holding a card).

    Raises CardError ``card.no_reader`` when PC/SC sees no reader (or not the
    named one) and ``card.no_card`` when no reader has a card on it.
    """
    from smartcard.CardConnection import CardConnection as PyscardConnection
    from smartcard.Exceptions import CardConnectionException, NoCardException

    readers = _pcsc_readers()
    if reader_name is not None:
        readers = [r for r in readers if str(r) == reader_name]
    if not readers:
        where = f" named {reader_name!r}" if reader_name else ""
        raise CardError(
            f"no card reader{where} is connected",
            code="card.no_reader",
            message_ja="カードリーダーが接続されていません。",
        )
    last: BaseException | None = None
    for reader in readers:
        connection = reader.createConnection()
        try:
            connection.connect(protocol=PyscardConnection.T1_protocol)
        except (NoCardException, CardConnectionException) as exc:
            last = exc
            _release(connection)
            continue
        return CardConnection(connection, str(reader))
    raise CardError(
        "no card on the reader: place the residence card on the reader",
        code="card.no_card",
        message_ja="カードが置かれていません。カードをリーダーに置いてください。",
    ) from last
