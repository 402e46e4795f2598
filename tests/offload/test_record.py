"""Known-answer tests for the record layer: ``offload.framing``, ``offload.record``,
``offload.batch``, and the sim-nic and fallback that frame records the same way.

No expected value here is computed by the code under test.  The evidence:

* RFC 8448 section 3, "Simple 1-RTT Handshake" (TLS 1.3, AES-128-GCM): the
  published records with the published traffic keys and IVs
  (``tests/vectors/rfc8448_simple_1rtt.json``, shared with test_keys.py).
* ``tests/vectors/openssl_records.json``: records OpenSSL 3 sealed in a real
  ``s_client`` -> ``s_server`` session on loopback - TLS 1.2 AES-128/256-GCM,
  AES-128-CCM and ChaCha20-Poly1305, TLS 1.3 AES-256-GCM, AES-128-CCM and
  ChaCha20-Poly1305 with OpenSSL's record padding - with the keys derived
  from s_client's key log by ``tests/vectors/make_openssl_records.py``
  (standard-library hmac, not ``offload.keys``).  RFC 5288 and RFC 7905
  publish no record vectors; these stand in for them.
* ``tests/helpers/wire.py``, a decoder written from the RFCs that shares no code
  with the layer (``cryptography``'s AEAD with hand-built nonces and AADs),
  where no published record exists: the 2^64 sequence edge.

Each record is sealed and opened through every path the layer has for it:
one record (``seal``/``open``/``open_into``), a batch in a pooled buffer
(``SwTx.frame``, ``lay_out`` + ``push_slots``), the bulk receive loop
(``open_data_into``), device framing through the sim-nic, and the software
fallback.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from offload.batch import RecordBuf, TxBatches
from offload.drivers.simnic import SimNic
from offload.errors import NoContentType, OuterTypeMismatch
from offload.fallback import sw_fallback
from offload.framing import (
    AAD12,
    HEADER,
    SEQ_MASK,
    ProtInfo,
    inner_plaintext,
    inner_type_at,
    pack_header,
    parse_header,
    tls12_aad,
    tls13_aad,
    xor_iv,
)
from offload.netdev import NetDevice, Segment
from offload.record import RecordOpener, RecordParser, RecordSealer
from offload.tcpseq import SEQ_MOD, SeqSpace
from offload.tls_device import DeviceTx
from offload.tls_sw import SwRx, SwTx
from offload.uapi import (
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_MAX_PAYLOAD_SIZE,
    CipherType,
    ContentType,
    CryptoInfo,
)
from tests.conftest import COMBOS, combo_id, random_info
from tests.helpers.wire import decrypt_records, encrypt_record, split_records

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
RFC8448: dict[str, Any] = json.loads((VECTORS / "rfc8448_simple_1rtt.json").read_text())
OPENSSL: dict[str, Any] = json.loads((VECTORS / "openssl_records.json").read_text())

DATA = int(ContentType.APPLICATION_DATA)
HANDSHAKE = int(ContentType.HANDSHAKE)
ALERT = int(ContentType.ALERT)
CLOSE_NOTIFY = bytes.fromhex("0100")  # alert level warning(1), description close_notify(0)


def r8448(name: str) -> bytes:
    return bytes.fromhex(RFC8448[name])


def rfc_info(who: str, phase: str = "application", seq: int = 0) -> CryptoInfo:
    """The crypto_info for RFC 8448's published key and IV (salt = IV[:4])."""
    iv = r8448(f"{who}_{phase}_iv")
    return CryptoInfo.create(
        TLS_1_3_VERSION,
        CipherType.AES_GCM_128,
        key=r8448(f"{who}_{phase}_key"),
        salt=iv[:4],
        iv=iv[4:],
        seq=seq,
    )


# The server's application-key stream of RFC 8448 section 3, in order:
# NewSessionTicket (seq 0), the 50-byte data record (seq 1), close_notify (seq 2).
SERVER_STREAM = [
    (HANDSHAKE, "new_session_ticket", "new_session_ticket_record"),
    (DATA, "application_data", "server_application_record"),
    (ALERT, "close_notify", "server_alert_record"),
]
# The client's: data (seq 0), close_notify (seq 1).
CLIENT_STREAM = [
    (DATA, "application_data", "client_application_record"),
    (ALERT, "close_notify", "client_alert_record"),
]


@dataclass(frozen=True)
class Known:
    """One record someone else sealed: its key, number, content and bytes."""

    info: CryptoInfo  # rec_seq = this record's number; TLS 1.2 AES iv = its explicit nonce
    ctype: int
    plaintext: bytes
    padding: int
    record: bytes


def _openssl_case(case: dict[str, Any]) -> list[Known]:
    version = TLS_1_2_VERSION if case["version"] == "1.2" else TLS_1_3_VERSION
    base = CryptoInfo.create(
        version,
        CipherType[case["cipher"]],
        key=bytes.fromhex(case["key"]),
        salt=bytes.fromhex(case["salt"]),
        iv=bytes.fromhex(case["iv"]),
        seq=case["first_seq"],
    )
    out = []
    for row in case["records"]:
        record = bytes.fromhex(row["record"])
        info = base.with_seq(row["seq"])
        if base.spec.explicit_nonce_size(version):
            info = type(info)(version, record[5:13], info.key, info.salt, info.rec_seq)
        out.append(
            Known(info, row["type"], bytes.fromhex(row["plaintext"]), row["padding"], record)
        )
    return out


OPENSSL_CASES = {case["name"]: _openssl_case(case) for case in OPENSSL["cases"]}


def rfc8448_records() -> list[Known]:
    out = []
    for who, stream in (("server", SERVER_STREAM), ("client", CLIENT_STREAM)):
        for seq, (ctype, plain, record) in enumerate(stream):
            out.append(Known(rfc_info(who, seq=seq), ctype, r8448(plain), 0, r8448(record)))
    out.append(
        Known(
            rfc_info("client", "handshake"),
            HANDSHAKE,
            r8448("client_finished"),
            0,
            r8448("client_finished_record"),
        )
    )
    return out


ALL_KNOWN = {f"rfc8448-{i}": k for i, k in enumerate(rfc8448_records())} | {
    f"{name}-seq{k.info.seq}": k for name, ks in OPENSSL_CASES.items() for k in ks
}
UNPADDED = {name: k for name, k in ALL_KNOWN.items() if not k.padding}


# --- the framing helpers ---------------------------------------------------------


def test_header_pack_and_parse_match_the_rfc_records() -> None:
    rec = r8448("server_application_record")
    assert pack_header(DATA, 0x43) == bytes.fromhex("1703030043") == rec[:5]
    assert parse_header(rec) == (DATA, TLS_1_2_VERSION, len(rec) - 5)
    assert parse_header(b"\x00" + rec, 1) == (DATA, TLS_1_2_VERSION, 0x43)


@pytest.mark.parametrize("name", [n for n in RFC8448 if n.endswith("_record")])
def test_tls13_aad_is_each_published_header(name: str) -> None:
    """RFC 8446 5.2: the additional data is the record header."""
    rec = r8448(name)
    assert tls13_aad(len(rec) - 5) == rec[:5]


def test_tls13_aad_is_type_23_whatever_the_record_type() -> None:
    """Linux's tls_make_aad writes TLS_RECORD_TYPE_DATA for every TLS 1.3 record."""
    prot = ProtInfo.from_info(rfc_info("server"))
    for ctype in (HANDSHAKE, ALERT, DATA, 20):
        assert prot.aad(7, ctype, 51) == bytes.fromhex("1703030043")


def test_tls12_aad_layout() -> None:
    """RFC 5246 6.2.3.3: seq_num(8) || type || version || length."""
    want = bytes.fromhex("0102030405060708 16 0303 0fff")
    assert tls12_aad(0x0102030405060708, HANDSHAKE, 0xFFF) == want
    info = random_info(TLS_1_2_VERSION, CipherType.AES_GCM_128)
    assert ProtInfo.from_info(info).aad(0x0102030405060708, HANDSHAKE, 0xFFF) == want


def test_xor_iv_is_rfc8446_5_3() -> None:
    """The 64-bit sequence number, left-padded to 12 bytes, XOR the IV."""
    iv = r8448("server_application_iv")
    static = int.from_bytes(iv, "big")
    assert xor_iv(static, 0) == iv
    assert xor_iv(static, 1) == iv[:11] + bytes([iv[11] ^ 1])
    top = xor_iv(static, SEQ_MASK)
    assert top[:4] == iv[:4] and top[4:] == bytes(b ^ 0xFF for b in iv[4:])


def test_nonces_per_construction() -> None:
    gcm12 = random_info(TLS_1_2_VERSION, CipherType.AES_GCM_128)
    prot = ProtInfo.from_info(gcm12)
    explicit = bytes(range(8))
    assert prot.nonce(99, explicit) == gcm12.salt + explicit  # RFC 5288: seq not used
    chacha12 = random_info(TLS_1_2_VERSION, CipherType.CHACHA20_POLY1305)
    iv = chacha12.iv
    want = iv[:4] + bytes(a ^ b for a, b in zip(iv[4:], (5).to_bytes(8, "big"), strict=True))
    assert ProtInfo.from_info(chacha12).nonce(5) == want  # RFC 7905
    gcm13 = rfc_info("server")
    assert ProtInfo.from_info(gcm13).nonce(0) == r8448("server_application_iv")


def test_fill_prepend() -> None:
    """tls_fill_prepend: header, then (TLS 1.2 AES) the explicit nonce; TLS 1.3
    records go out as opaque type 23 whatever their real type."""
    buf = bytearray(16)
    gcm12 = ProtInfo.from_info(random_info(TLS_1_2_VERSION, CipherType.AES_GCM_256))
    gcm12.fill_prepend(buf, 1, ALERT, 2, explicit=0x0102030405060708)
    assert bytes(buf[:14]) == bytes.fromhex("00 150303001a 0102030405060708")
    chacha12 = ProtInfo.from_info(random_info(TLS_1_2_VERSION, CipherType.CHACHA20_POLY1305))
    chacha12.fill_prepend(buf, 0, HANDSHAKE, 16)
    assert bytes(buf[:5]) == bytes.fromhex("1603030020")
    tls13 = ProtInfo.from_info(rfc_info("server"))
    inner = len(r8448("new_session_ticket")) + 1  # the message and its type
    tls13.fill_prepend(buf, 0, HANDSHAKE, inner)
    assert bytes(buf[:5]) == r8448("new_session_ticket_record")[:5]


def test_inner_plaintext_and_padding() -> None:
    """RFC 8446 5.2: content, type, zeros; the type is the last non-zero byte."""
    inner = inner_plaintext(b"ab\x00", HANDSHAKE, pad=3)
    assert inner == b"ab\x00\x16\x00\x00\x00"
    assert inner_type_at(inner) == 3
    assert inner_type_at(inner_plaintext(b"", ALERT)) == 0
    assert inner_type_at(bytes(7)) == -1
    assert inner_type_at(b"") == -1


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_prot_sizes_match_sealed_records(combo: tuple[int, CipherType]) -> None:
    version, cipher = combo
    info = random_info(version, cipher)
    prot = ProtInfo.from_info(info)
    ex = 8 if version == TLS_1_2_VERSION and cipher != CipherType.CHACHA20_POLY1305 else 0
    assert (prot.explicit_size, prot.tail_size, prot.tag_size) == (ex, int(prot.is13), 16)
    assert prot.prepend_size == 5 + ex
    assert prot.max_body_len() == TLS_MAX_PAYLOAD_SIZE + ex + 16 + prot.tail_size
    for n in (0, 1, 1000, TLS_MAX_PAYLOAD_SIZE):
        data = os.urandom(n)
        rec = RecordSealer(info).seal(DATA, data)
        assert len(rec) == prot.sealed_size(n) == n + prot.overhead_size
        assert decrypt_records(info, bytes(rec)) == [(DATA, data)]


# --- known records, sealed -----------------------------------------------------------


def test_rfc8448_server_stream_from_one_sealer() -> None:
    """NewSessionTicket, data, close_notify: records 0, 1, 2 of the server's
    application key, byte for byte as published."""
    sealer = RecordSealer(rfc_info("server"))
    for ctype, plain, record in SERVER_STREAM:
        assert bytes(sealer.seal(ctype, r8448(plain))) == r8448(record), record
    assert sealer.seq == 3 and not sealer.exhausted
    assert sealer.live_info().rec_seq == (3).to_bytes(8, "big")


def test_rfc8448_client_stream_from_one_sealer() -> None:
    sealer = RecordSealer(rfc_info("client"))
    for ctype, plain, record in CLIENT_STREAM:
        assert bytes(sealer.seal(ctype, r8448(plain))) == r8448(record), record


def test_rfc8448_handshake_records() -> None:
    """The client's Finished (handshake key, seq 0) seals as published; the
    server's 674-byte flight opens to EncryptedExtensions ... Finished and
    seals back to the same bytes."""
    sealer = RecordSealer(rfc_info("client", "handshake"))
    assert bytes(sealer.seal(HANDSHAKE, r8448("client_finished"))) == r8448(
        "client_finished_record"
    )
    flight = r8448("server_handshake_record")
    ctype, plain = RecordOpener(rfc_info("server", "handshake")).open(flight)
    assert ctype == HANDSHAKE
    assert bytes(plain).startswith(r8448("encrypted_extensions"))
    assert bytes(plain).endswith(r8448("server_finished"))
    resealed = RecordSealer(rfc_info("server", "handshake")).seal(HANDSHAKE, plain)
    assert bytes(resealed) == flight


@pytest.mark.parametrize("name", sorted(UNPADDED))
def test_known_record_seal_and_seal_in_place(name: str) -> None:
    k = UNPADDED[name]
    assert bytes(RecordSealer(k.info).seal(k.ctype, k.plaintext)) == k.record
    # The zero-copy form: plaintext (and 1.3 inner type) already in the record buffer.
    sealer = RecordSealer(k.info)
    buf = bytearray(sealer.sealed_size(len(k.plaintext)))
    at = sealer.prot.prepend_size
    buf[at : at + len(k.plaintext)] = k.plaintext
    sealer.seal_in_place(buf, k.ctype, len(k.plaintext))
    assert bytes(buf) == k.record
    assert sealer.seq == (k.info.seq + 1) & SEQ_MASK


@pytest.mark.parametrize("name", sorted(OPENSSL_CASES))
def test_openssl_stream_from_one_sealer(name: str) -> None:
    """Consecutive records from one sealer: the sequence number and (TLS 1.2
    AES) the explicit nonce advance exactly as OpenSSL's did.  The layer
    never pads (Linux does not), so a padded record only uses up its number."""
    known = OPENSSL_CASES[name]
    sealer = RecordSealer(known[0].info)
    for k in known:
        if k.padding:
            sealer.advance()
            if sealer.explicit_size:
                sealer.explicit += 1
            continue
        assert bytes(sealer.seal(k.ctype, k.plaintext)) == k.record, k.info.seq


def _data_runs(known: list[Known]) -> Iterator[list[Known]]:
    """Runs of consecutive unpadded records of one type (one ``frame`` call each)."""
    run: list[Known] = []
    for k in known:
        if k.padding or (run and run[-1].ctype != k.ctype):
            if run:
                yield run
            run = []
        if not k.padding:
            run.append(k)
    if run:
        yield run


def _sw_frame(k0: Known, run: list[Known]) -> bytes:
    """``SwTx.frame`` record by record (each send is one record: no MSG_MORE)."""
    tx = SwTx(k0.info)
    out = b""
    for k in run:
        out += b"".join(bytes(b) for b in tx.frame(k.ctype, k.plaintext, False))
    return out


@pytest.mark.parametrize("name", [*sorted(OPENSSL_CASES), "rfc8448-server", "rfc8448-client"])
def test_known_records_through_software_tx(name: str) -> None:
    """``SwTx.frame`` (the batch loops: TLS 1.2 straight from the caller's
    buffer, TLS 1.3 placed then sealed in place) and ``lay_out`` +
    ``push_slots`` (sendfile: slots filled, sealed in place)."""
    for run in _data_runs(_known(name)):
        want = b"".join(k.record for k in run)
        assert _sw_frame(run[0], run) == want
        if run[0].ctype != DATA:
            continue
        tx = SwTx(run[0].info)
        got = b""
        for k in run:
            buf, slots = tx.lay_out(len(k.plaintext))
            (slot,) = slots
            slot[: len(k.plaintext)] = k.plaintext
            tx.push_slots(buf, slots)
            got += bytes(buf)
        assert got == want


def _known(name: str) -> list[Known]:
    if name == "rfc8448-server":
        return [
            Known(rfc_info("server", seq=i), c, r8448(p), 0, r8448(r))
            for i, (c, p, r) in enumerate(SERVER_STREAM)
        ]
    if name == "rfc8448-client":
        return [
            Known(rfc_info("client", seq=i), c, r8448(p), 0, r8448(r))
            for i, (c, p, r) in enumerate(CLIENT_STREAM)
        ]
    return OPENSSL_CASES[name]


NIC_CASES = [
    *(n for n in sorted(OPENSSL_CASES) if "ccm" not in n),  # the sim-nic cannot stream AES-CCM
    "rfc8448-server",
    "rfc8448-client",
]


@pytest.mark.parametrize("name", NIC_CASES)
def test_known_records_through_the_sim_nic_and_the_fallback(name: str) -> None:
    """Device TX frames the plaintext (``TxBatches.frame_plaintext``), the
    sim-nic seals it segment by segment - in order, cut at odd places, and
    out of order (its resync path) - and the software fallback seals it on
    a device without the context: all give the published bytes."""
    for run in _data_runs(_known(name)):
        want = b"".join(k.record for k in run)
        dev = NetDevice("nic0", SimNic())
        space = SeqSpace(SEQ_MOD - 100)  # the TCP sequence number wraps inside the run
        tx = DeviceTx(run[0].info, dev, space, 0)
        framed = b""
        for k in run:
            framed += b"".join(bytes(b) for b in tx.frame(k.ctype, k.plaintext, False))
        assert framed != want and len(framed) == len(want)
        out = bytearray(len(framed))
        for lo, hi in _cuts(len(framed), 37):
            seg = Segment(space.seq(lo), memoryview(bytearray(framed[lo:hi])))
            assert dev.driver.xmit(tx.ctx, seg, tx, memoryview(out)[lo:hi])
        assert bytes(out) == want
        for lo, hi in reversed(_cuts(len(framed), 101)):  # every segment out of order
            seg = Segment(space.seq(lo), memoryview(bytearray(framed[lo:hi])))
            piece = bytearray(hi - lo)
            assert dev.driver.xmit(tx.ctx, seg, tx, memoryview(piece))
            assert bytes(piece) == want[lo:hi]
            assert sw_fallback(tx.key_at, seg, tx, memoryview(piece))
            assert bytes(piece) == want[lo:hi]
        assert dev.stats["tx_tls_ooo"] > 0


def _cuts(n: int, step: int) -> list[tuple[int, int]]:
    return [(i, min(i + step, n)) for i in range(0, n, step)]


# --- known records, opened -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_KNOWN))
def test_known_record_open_and_open_into(name: str) -> None:
    k = ALL_KNOWN[name]
    opener = RecordOpener(k.info)
    ctype, plain = opener.open(k.record)
    assert (ctype, bytes(plain)) == (k.ctype, k.plaintext)
    assert opener.seq == (k.info.seq + 1) & SEQ_MASK
    opener = RecordOpener(k.info)
    dst = memoryview(bytearray(opener.inner_len(k.record)))
    assert opener.inner_len(k.record) == len(k.plaintext) + k.padding + int(opener.is13)
    ctype, n = opener.open_into(k.record, dst)
    assert (ctype, bytes(dst[:n])) == (k.ctype, k.plaintext)


@pytest.mark.parametrize("name", [*sorted(OPENSSL_CASES), "rfc8448-server"])
def test_known_stream_through_software_rx(name: str) -> None:
    """The whole stream into ``SwRx``: data records through the bulk loop
    (``open_data_into``, straight into the reader's buffer), control records
    through the one-record path, OpenSSL's padding counted."""
    known = _known(name)
    rx = SwRx(known[0].info)
    for k in known:
        rx.feed(k.record[:3])  # records cut mid-header, as TCP may deliver them
        rx.feed(k.record[3:])
    got: list[tuple[int, bytes]] = []
    dst = memoryview(bytearray(1 << 16))
    while (res := rx.decrypt_next(dst)) is not None:
        if isinstance(res, int):
            got.append((DATA, bytes(dst[:res])))
        else:
            got.append((res.content_type, bytes(res.data)))
            rx.consume(res, res.remaining)
    merged: list[tuple[int, bytes]] = []
    for ctype, data in got:  # bulk runs pack several data records into one read
        if merged and ctype == DATA == merged[-1][0]:
            merged[-1] = (DATA, merged[-1][1] + data)
        else:
            merged.append((ctype, data))
    want: list[tuple[int, bytes]] = []
    for k in known:
        if want and k.ctype == DATA == want[-1][0]:
            want[-1] = (DATA, want[-1][1] + k.plaintext)
        else:
            want.append((k.ctype, k.plaintext))
    assert merged == want
    assert rx.padding_seen == sum(1 for k in known if k.padding)
    assert rx.opener.seq == known[-1].info.seq + 1


def test_open_data_into_takes_runs_of_data_records_only() -> None:
    """The bulk loop stops at the NewSessionTicket (a handshake record under
    the opaque type 23) and at close_notify, consuming nothing of them."""
    parser = RecordParser()
    opener = RecordOpener(rfc_info("server"))
    for _, _, record in SERVER_STREAM:
        parser.feed(r8448(record))
    dst = memoryview(bytearray(4096))
    assert opener.open_data_into(parser, dst) == (0, 0, 0)
    assert parser.buffered == sum(len(r8448(r)) for _, _, r in SERVER_STREAM)
    raw = parser.next_record()
    assert raw is not None
    assert opener.open(raw)[0] == HANDSHAKE
    assert opener.open_data_into(parser, dst) == (1, 50, 0)
    assert bytes(dst[:50]) == r8448("application_data")
    assert opener.open_data_into(parser, dst) == (0, 0, 0)
    raw = parser.next_record()
    assert raw is not None
    ctype, plain = opener.open(raw)
    assert (ctype, bytes(plain)) == (ALERT, CLOSE_NOTIFY)
    assert parser.buffered == 0 and opener.seq == 3


def test_rx_authenticates_tls13_as_type_23() -> None:
    """tls_make_aad: a published record whose header type byte was changed
    still opens (its AAD is rebuilt as type 23); a record sealed over a
    header of type 22 fails as a bad tag that names its outer type."""
    rec = bytearray(r8448("server_application_record"))
    rec[0] = HANDSHAKE
    ctype, plain = RecordOpener(rfc_info("server", seq=1)).open(rec)
    assert (ctype, bytes(plain)) == (DATA, r8448("application_data"))
    info = rfc_info("server", seq=1)
    sealed_over_22 = encrypt_record(info, 1, DATA, b"x", outer=HANDSHAKE)
    with pytest.raises(OuterTypeMismatch) as exc:
        RecordOpener(info).open(sealed_over_22)
    assert exc.value.errno == errno.EBADMSG and exc.value.content_type == HANDSHAKE


def test_tls13_padding_and_no_content_type() -> None:
    """Padding of any length opens to the content; all zeros is EBADMSG."""
    info = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_256)
    for pad in (0, 1, 200, TLS_MAX_PAYLOAD_SIZE - 3):
        rec = encrypt_record(info, 0, ALERT, CLOSE_NOTIFY, pad=pad)
        ctype, plain = RecordOpener(info).open(rec)
        assert (ctype, bytes(plain)) == (ALERT, CLOSE_NOTIFY)
    body = bytes(40)  # inner plaintext with no content type at all
    nonce = bytes(a ^ b for a, b in zip(info.salt + info.iv, bytes(12), strict=True))
    header = bytes.fromhex("1703030038")
    rec = header + AESGCM(info.key).encrypt(nonce, body, header)
    with pytest.raises(NoContentType) as exc:
        RecordOpener(info).open(rec)
    assert exc.value.errno == errno.EBADMSG


# --- the 2^64 sequence edge -------------------------------------------------------


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_sealer_at_the_last_sequence_numbers(combo: tuple[int, CipherType]) -> None:
    """Records 2^64-2 and 2^64-1 are sealed with their own numbers (checked
    by the independent decoder), then the key is spent: rec_seq wraps to 0."""
    info = random_info(*combo, seq=SEQ_MASK - 1)
    sealer = RecordSealer(info)
    assert sealer.records_left() == 1
    a = sealer.seal(DATA, b"second to last")
    assert not sealer.exhausted and sealer.records_left() == 0
    b = sealer.seal(ALERT, CLOSE_NOTIFY)
    assert sealer.exhausted and sealer.seq == 0
    assert decrypt_records(info, bytes(a + b)) == [(DATA, b"second to last"), (ALERT, CLOSE_NOTIFY)]


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_batch_across_the_sequence_edge(combo: tuple[int, CipherType]) -> None:
    """A batch that would run past 2^64-1 goes record by record (TLS 1.3:
    the sequence number; TLS 1.2 AES: the explicit nonce, which wraps
    modulo 2^64 while rec_seq does not)."""
    version, cipher = combo
    info = random_info(version, cipher, seq=SEQ_MASK - 2)
    if info.spec.explicit_nonce_size(version):  # the nonce wraps first, far from rec_seq's end
        info = type(info)(
            version,
            (SEQ_MASK - 1).to_bytes(8, "big"),
            info.key,
            info.salt,
            (1000).to_bytes(8, "big"),
        )
    sealer = RecordSealer(info)
    batches = TxBatches(sealer, 100, 4, 1)
    n_rec = 3
    data = os.urandom(100 * n_rec)
    out = batches.seal_from(DATA, data)
    got = decrypt_records(info, bytes(out))
    assert got == [(DATA, data[i * 100 : (i + 1) * 100]) for i in range(n_rec)]
    recs = split_records(bytes(out))
    if sealer.explicit_size:
        assert [r[5:13] for r in recs] == [
            (SEQ_MASK - 1).to_bytes(8, "big"),
            SEQ_MASK.to_bytes(8, "big"),
            bytes(8),
        ]
        assert sealer.explicit == 1 and sealer.seq == 1003 and not sealer.exhausted
    else:
        assert sealer.exhausted and sealer.seq == 0
    # The in-place form (sendfile) of the same batch, from the same state.
    sealer2 = RecordSealer(info)
    b2 = TxBatches(sealer2, 100, 4, 1)
    buf, slots = b2.lay_out(len(data))
    for i, slot in enumerate(slots):
        slot[:100] = data[i * 100 : (i + 1) * 100]
    b2.seal(buf, DATA, slots)
    assert bytes(buf) == bytes(out)


def test_software_tx_refuses_the_last_record_number() -> None:
    """``SwTx`` never sends record 2^64-1 (Linux aborts with EBADMSG while
    sealing it): the send that would need it fails whole, and the key is spent."""
    info = random_info(TLS_1_3_VERSION, CipherType.CHACHA20_POLY1305, seq=SEQ_MASK - 2)
    tx = SwTx(info, max_payload=10)
    out = b"".join(bytes(b) for b in tx.frame(DATA, b"0123456789abcdefghij", False))
    assert [p for _, p in decrypt_records(info, out)] == [b"0123456789", b"abcdefghij"]
    with pytest.raises(OSError) as exc:
        tx.lay_out(1)
    assert exc.value.errno == errno.EBADMSG
    assert tx.sealer.exhausted and tx.sealer.seq == 0


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_opener_at_the_last_sequence_number(combo: tuple[int, CipherType]) -> None:
    """Record 2^64-1 opens; then the direction is spent.  The bulk loop leaves
    that record to the one-record path, which reports the wrap."""
    info = random_info(*combo, seq=SEQ_MASK)
    ex = b"\xab" * 8 if info.spec.explicit_nonce_size(info.version) else b""
    rec = encrypt_record(info, SEQ_MASK, DATA, b"last", explicit=ex)
    parser = RecordParser()
    parser.feed(rec)
    opener = RecordOpener(info)
    assert opener.open_data_into(parser, memoryview(bytearray(100))) == (0, 0, 0)
    raw = parser.next_record()
    assert raw is not None
    ctype, plain = opener.open(raw)
    assert (ctype, bytes(plain)) == (DATA, b"last")
    assert opener.exhausted and opener.seq == 0


def test_device_framing_across_the_explicit_nonce_wrap() -> None:
    """Pooled full batches framed for the NIC with the explicit nonce running
    past 2^64-1: the batch that wraps is framed record by record (the strided
    re-framing of a buffer whose headers are in place refuses it), the next
    one strided again; the sim-nic's bytes equal software TX's, nonce for
    nonce."""
    start = SEQ_MASK - 150  # batches of 64: the third one wraps
    base = random_info(TLS_1_2_VERSION, CipherType.AES_GCM_128, seq=7)
    info = type(base)(base.version, start.to_bytes(8, "big"), base.key, base.salt, base.rec_seq)
    dev = NetDevice("nic0", SimNic())
    space = SeqSpace(12345)
    tx = DeviceTx(info, dev, space, 0)
    sw = SwTx(info)
    full = tx.batch_records * tx.max_payload
    seen: list[RecordBuf] = []
    for _ in range(4):
        data = os.urandom(full)
        at = tx.next_offset
        buf, slots = tx.lay_out(full)
        seen.append(buf)
        pos = 0
        for slot in slots:
            slot[:] = data[pos : pos + len(slot)]
            pos += len(slot)
        tx.push_slots(buf, slots)
        assert dev.driver.xmit_burst(  # type: ignore[attr-defined]
            tx.ctx, space.seq(at), memoryview(buf), 65536, tx
        ) == len(buf)
        ref = b"".join(bytes(b) for b in sw.frame(DATA, data, False))
        assert bytes(buf) == ref
        tx.clean_acked(tx.next_offset)
        tx.recycle(buf)
    assert all(b is seen[0] for b in seen)  # one pooled buffer, framed again in place
    assert tx.sealer.explicit == sw.sealer.explicit == (start + 4 * tx.batch_records) & SEQ_MASK
    assert tx.sealer.seq == sw.sealer.seq == 7 + 4 * tx.batch_records


# --- the parser's run API -----------------------------------------------------------


def test_parser_pending_and_consume() -> None:
    recs = [r8448(r) for _, _, r in SERVER_STREAM]
    parser = RecordParser()
    parser.feed(b"".join(recs)[:-4])
    view = parser.pending()
    assert bytes(view) == b"".join(recs)[:-4]
    assert HEADER.unpack_from(view, 0)[2] == len(recs[0]) - 5
    parser.consume(len(recs[0]))
    assert bytes(parser.pending()) == b"".join(recs[1:])[:-4]
    with pytest.raises(ValueError):
        parser.consume(parser.buffered + 1)
    with pytest.raises(ValueError):
        parser.consume(-1)
    raw = parser.next_record()
    assert raw is not None and bytes(raw) == recs[1]
    assert parser.next_record() is None  # the last record is 4 bytes short
    parser.feed(recs[2][-4:])
    raw = parser.next_record()
    assert raw is not None and bytes(raw) == recs[2]
    assert len(parser.pending()) == 0


def test_aad12_struct_is_the_rfc_layout() -> None:
    """The struct the hot loops bind is the same 13 bytes as ``tls12_aad``."""
    assert AAD12.size == 13
    assert AAD12.pack(1, DATA, TLS_1_2_VERSION, 2) == tls12_aad(1, DATA, 2)
