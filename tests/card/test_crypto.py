"""Crypto and APDU unit tests: the spec's generation-2 vectors, a generation-1 round trip."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from appliance.agent.card import apdu, crypto

# 在留カード等仕様書 (second generation, 001460711 Ver 1.1), appendix 2.
CARD_NUMBER = "AA12345678BB"
KENC = bytes.fromhex("6522B4E171195BB218223A976C040111")
RND_IFD = bytes.fromhex("1122334455667788")
K_IFD = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
RND_ICC = bytes.fromhex("921CE277323DA057")
E_IFD = bytes.fromhex("4AD3C7B6BB484A52771977DED618B41DF841FA0476A05FBE041DEAD6109E773B")
M_IFD = bytes.fromhex("AC854617634F5397")
E_ICC = bytes.fromhex("289A96B1DA6AE3DA87770419BFD14F0BDAD15F36432B5A946C188C7221759A62")
M_ICC = bytes.fromhex("FA942EC51E62FF5F")
E_ICC_PLAIN = bytes.fromhex("921CE277323DA05711223344556677882CC6AF9B8B607C662FDCAD27B401D08B")
KS_ENC = bytes.fromhex("C19CF13D3D7FBEE9EA293D834C88952F")
VERIFY_DATA = bytes.fromhex("EE0B31EF877F68D071C56D58C72E6748")
VERIFY_COMMAND = bytes.fromhex("0820008613861101EE0B31EF877F68D071C56D58C72E6748")


def _gen2_request() -> crypto.MutualAuthRequest:
    return crypto.make_mutual_auth(2, CARD_NUMBER, RND_ICC, rnd_ifd=RND_IFD, k_ifd=K_IFD)


def test_gen2_key_derivation_vector():
    assert crypto.derive_key(CARD_NUMBER) == KENC
    assert crypto.derive_key(" aa12345678bb ") == KENC  # as typed at the counter


def test_gen2_mutual_authenticate_vectors():
    request = _gen2_request()
    assert request.e_ifd == E_IFD
    assert request.m_ifd == M_IFD
    assert (
        apdu.mutual_authenticate(request.data)
        == bytes.fromhex("0082000028") + E_IFD + M_IFD + b"\x00"
    )


def test_gen2_icc_answer_vectors():
    assert crypto.cipher_decrypt(2, KENC, E_ICC) == E_ICC_PLAIN
    assert crypto.mac(2, KENC, E_ICC) == M_ICC
    assert crypto.open_icc_response(_gen2_request(), E_ICC + M_ICC) == KS_ENC
    assert crypto.derive_session_key(K_IFD, E_ICC_PLAIN[16:]) == KS_ENC


def test_gen2_verify_vectors():
    assert crypto.verify_data(2, KS_ENC, CARD_NUMBER) == VERIFY_DATA
    assert apdu.sm_verify(VERIFY_DATA) == VERIFY_COMMAND


@pytest.mark.parametrize(
    "answer",
    [
        E_ICC + bytes(8),  # wrong M.ICC
        E_ICC[:16] + bytes(16) + M_ICC,  # tampered E.ICC
        E_ICC,  # truncated
    ],
)
def test_gen2_bad_icc_answer_is_refused(answer):
    with pytest.raises(crypto.AuthenticationError):
        crypto.open_icc_response(_gen2_request(), answer)


def test_gen2_wrong_card_number_fails_mac():
    request = crypto.make_mutual_auth(2, "AA12345678BC", RND_ICC, rnd_ifd=RND_IFD, k_ifd=K_IFD)
    with pytest.raises(crypto.AuthenticationError):
        crypto.open_icc_response(request, E_ICC + M_ICC)


@pytest.mark.parametrize(
    "bad", ["AA1234567BB", "AA12345678BBC", "AA12345678B-", "ＡＡ12345678BB", ""]
)
def test_card_number_shape_is_checked(bad):
    with pytest.raises(ValueError):
        crypto.derive_key(bad)


# --- generation 1: a reference ICC written here from the primitives, independently


def _des(key8: bytes, block: bytes, *, decrypt: bool = False) -> bytes:
    cipher = Cipher(TripleDES(key8 * 3), modes.ECB())  # K1=K2=K3: single DES
    op = cipher.decryptor() if decrypt else cipher.encryptor()
    return op.update(block) + op.finalize()


def _ref_3des_cbc(key: bytes, data: bytes, *, decrypt: bool = False) -> bytes:
    """EDE 2-key 3DES in CBC with zero IV, block by block from single DES."""
    k1, k2 = key[:8], key[8:]
    out, prev = b"", bytes(8)
    for i in range(0, len(data), 8):
        block = data[i : i + 8]
        if decrypt:
            plain = _des(k1, _des(k2, _des(k1, block, decrypt=True)), decrypt=True)
            out += bytes(a ^ b for a, b in zip(plain, prev, strict=True))
            prev = block
        else:
            x = bytes(a ^ b for a, b in zip(block, prev, strict=True))
            prev = _des(k1, _des(k2, _des(k1, x), decrypt=True))
            out += prev
    return out


def _ref_retail_mac(key: bytes, data: bytes) -> bytes:
    """ISO 9797-1 alg 3: DES-CBC(K1) over padded data, then D(K2), E(K1) on the result."""
    data = data + b"\x80" + bytes(-(len(data) + 1) % 8)
    h = bytes(8)
    for i in range(0, len(data), 8):
        h = _des(key[:8], bytes(a ^ b for a, b in zip(h, data[i : i + 8], strict=True)))
    return _des(key[:8], _des(key[8:], h, decrypt=True))


class _RefIcc:
    def __init__(self, card_number: str):
        self.key = hashlib.sha1(card_number.encode()).digest()[:16]
        self.rnd_icc = bytes.fromhex("0102030405060708")
        self.k_icc = bytes(range(0x60, 0x70))

    def answer(self, data: bytes) -> tuple[bytes, bytes]:
        e_ifd, m_ifd = data[:32], data[32:]
        assert _ref_retail_mac(self.key, e_ifd) == m_ifd, "M.IFD rejected"
        plain = _ref_3des_cbc(self.key, e_ifd, decrypt=True)
        assert plain[8:16] == self.rnd_icc
        rnd_ifd, k_ifd = plain[:8], plain[16:]
        e_icc = _ref_3des_cbc(self.key, self.rnd_icc + rnd_ifd + self.k_icc)
        seed = bytes(a ^ b for a, b in zip(k_ifd, self.k_icc, strict=True))
        ks = hashlib.sha1(seed + b"\x00\x00\x00\x01").digest()[:16]
        return e_icc + _ref_retail_mac(self.key, e_icc), ks


def test_gen1_round_trip_with_reference_icc():
    icc = _RefIcc("AB98765432CD")
    request = crypto.make_mutual_auth(1, "ab98765432cd", icc.rnd_icc)
    answer, ks_card = icc.answer(request.data)
    ks = crypto.open_icc_response(request, answer)
    assert ks == ks_card
    # VERIFY data the card decrypts back to the card number
    plain = _ref_3des_cbc(ks, crypto.verify_data(1, ks, "AB98765432CD"), decrypt=True)
    assert plain == b"AB98765432CD\x80\x00\x00\x00"
    # an SM response the card encrypts decrypts on our side
    secret = b"\xd2\x08" + b"20240401"
    padded = secret + b"\x80" + bytes(-(len(secret) + 1) % 8)
    assert crypto.decrypt_sm_data(1, ks, _ref_3des_cbc(ks, padded)) == secret


def test_gen1_wrong_card_number_is_rejected_by_card():
    icc = _RefIcc("AB98765432CD")
    request = crypto.make_mutual_auth(1, "AB98765432CE", icc.rnd_icc)
    with pytest.raises(AssertionError, match="M.IFD rejected"):
        icc.answer(request.data)


def test_gen1_wrong_card_number_fails_our_check():
    icc = _RefIcc("AB98765432CD")
    good = crypto.make_mutual_auth(1, "AB98765432CD", icc.rnd_icc)
    answer, _ = icc.answer(good.data)
    wrong = crypto.make_mutual_auth(
        1, "AB98765432CE", icc.rnd_icc, rnd_ifd=good.rnd_ifd, k_ifd=good.k_ifd
    )
    with pytest.raises(crypto.AuthenticationError):
        crypto.open_icc_response(wrong, answer)


@pytest.mark.parametrize("data", [b"", b"x", bytes(7), bytes(8), bytes(range(40))])
def test_retail_mac_matches_reference(data):
    key = bytes(range(1, 17))
    assert crypto.retail_mac(key, data) == _ref_retail_mac(key, data)


@pytest.mark.parametrize("generation", [1, 2])
@pytest.mark.parametrize("length", [0, 1, 7, 8, 15, 16, 300])
def test_sm_padding_round_trip(generation, length):
    data = bytes((i * 7) % 256 for i in range(length))
    assert (
        crypto.decrypt_sm_data(generation, KS_ENC, crypto.encrypt_sm_data(generation, KS_ENC, data))
        == data
    )


def test_sm_decrypt_with_wrong_key_is_refused():
    ct = crypto.encrypt_sm_data(2, KS_ENC, b"\xc2\x0c" + CARD_NUMBER.encode())
    with pytest.raises(crypto.AuthenticationError):
        crypto.decrypt_sm_data(2, KENC, ct)


# --- APDUs, status words, TLV


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (apdu.select_df(apdu.AID_DF1), "00A4040C10D392F0004F0200000000000000000000"),
        (apdu.select_df(apdu.AID_DF3), "00A4040C10D392F0004F0400000000000000000000"),
        (apdu.read_binary(0x0A, 2), "00B08A0002"),
        (apdu.read_binary(0x02, 0, extended=True), "00B08200000000"),
        (apdu.get_challenge(), "0084000008"),
        (apdu.sm_read_binary(0x04), "08B08400000004960200000000"),
    ],
)
def test_command_bytes(command, expected):
    assert command == bytes.fromhex(expected)


@pytest.mark.parametrize(
    ("sw", "code"),
    [
        (0x6300, "card.wrong_card_number"),
        (0x6982, "card.security_status"),
        (0x6988, "card.sm_data_incorrect"),
        (0x6882, "card.sm_not_supported"),
        (0x6A82, "card.file_not_found"),
        (0x6A86, "card.bad_parameters"),
        (0x6B00, "card.offset_out_of_range"),
        (0x6F00, "card.status"),
    ],
)
def test_status_words_map_to_codes(sw, code):
    with pytest.raises(apdu.CardStatusError) as info:
        apdu.check_status(apdu.parse_response(b"\x01" + sw.to_bytes(2, "big")), "VERIFY")
    assert info.value.code == code
    assert f"{sw:04X}" in info.value.message


def test_status_ok_returns_data():
    assert apdu.check_status(apdu.parse_response(b"\x01\x02\x90\x00"), "X") == b"\x01\x02"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("C10131", [(0xC1, b"1")]),
        ("C1023035FFFF", [(0xC1, b"05")]),
        ("D20101D3820003414243", [(0xD2, b"\x01"), (0xD3, b"ABC")]),
        ("DFD10100", [(0xDFD1, b"\x00")]),
        ("5F1F8101AA", [(0x5F1F, b"\xaa")]),
    ],
)
def test_parse_tlv(data, expected):
    assert apdu.parse_tlv(bytes.fromhex(data)) == expected


@pytest.mark.parametrize("data", ["C105313233", "C1", "C18401", "DF"])
def test_parse_tlv_rejects_malformed(data):
    with pytest.raises(apdu.TlvError):
        apdu.parse_tlv(bytes.fromhex(data))


def test_parse_sm_response():
    assert apdu.parse_sm_response(bytes.fromhex("8603 01AABB")) == b"\xaa\xbb"
    with pytest.raises(apdu.TlvError):
        apdu.parse_sm_response(bytes.fromhex("8703 01AABB"))
