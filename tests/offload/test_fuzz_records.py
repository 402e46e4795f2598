"""Property-based fuzzing of the record layer (hypothesis).

Records are built by ``tests/helpers/wire.py`` (``encrypt_record``), which shares no
code with ``offload.record``, so the layer is checked against an independent
encoder.  Three levels:

1. ``RecordParser`` + ``RecordOpener`` (sans-I/O) on valid streams cut at
   arbitrary points: the decoded (type, plaintext) list is exactly what was
   built.
2. The same on mutated streams (bit flips, truncation, header edits,
   duplicated / reordered / dropped records, forged records, garbage): only
   ``OSError`` with EBADMSG/EMSGSIZE/EINVAL may escape, every record returned
   is the one built at that sequence number (a forged tag never verifies),
   every intact leading record is still returned, and the parser never holds
   more than one maximal record plus the input it was just given.
3. Raw bytes from a plain TCP socket into ``KTLSSocket(backend="sw")`` with
   TLS_RX: ``recv``/``recvmsg`` only raise the documented errnos, never hang,
   never deliver plaintext that was not in a valid record, a bad record's
   EBADMSG is sticky while a stream abort (framing error, sequence wrap) is
   reported once and followed by EOF, and a TLS 1.3 KeyUpdate pauses RX
   (EKEYEXPIRED) until the next key.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import socket
import struct
import threading
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from offload import KTLSSocket
from offload.errors import StreamAbort
from offload.record import RecordOpener, RecordParser
from offload.uapi import (
    CIPHER_SPECS,
    SOL_TCP,
    SOL_TLS,
    TCP_ULP,
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_GET_RECORD_TYPE,
    TLS_HEADER_SIZE,
    TLS_MAX_PAYLOAD_SIZE,
    TLS_RX,
    CipherType,
    CryptoInfo,
)
from tests.conftest import COMBOS, combo_id
from tests.helpers.wire import encrypt_record

Content = tuple[int, bytes]

CMSG = socket.CMSG_SPACE(1)
MAX_RECORDS = 6  # records per socket example (and keys drawn for KeyUpdates)
SEQ_MAX = (1 << 64) - 1
DATA = 23
HANDSHAKE = 22
KEY_UPDATE = 24
PARSER_ERRNOS = {errno.EBADMSG, errno.EMSGSIZE, errno.EINVAL}
STICKY_ERRNOS = PARSER_ERRNOS

SANS_IO = settings(
    max_examples=45,  # per version x cipher: 8 x 45 = 360 examples per test
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SOCKETS = settings(
    max_examples=int(os.environ.get("TLSCTL_FUZZ_EXAMPLES", "80")),
    deadline=None,
    derandomize=False,
    print_blob=True,
    # Shrinking socket examples takes minutes; report the failing example as
    # found (all draws are printed) and keep minimal reproducers as plain tests.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- strategies -----------------------------------------------------------


SEQS = st.one_of(
    st.just(0),
    st.integers(0, SEQ_MAX),
    st.sampled_from([1, 2**32 - 1, 2**63, SEQ_MAX - 4, SEQ_MAX - 1, SEQ_MAX]),
)


def infos(
    version: int, cipher: CipherType, seqs: st.SearchStrategy[int] = SEQS
) -> st.SearchStrategy[CryptoInfo]:
    """crypto_infos with keys, IVs and salts drawn by hypothesis (reproducible)."""
    spec = CIPHER_SPECS[cipher]

    def fixed(n: int) -> st.SearchStrategy[bytes]:
        return st.binary(min_size=n, max_size=n)

    return st.builds(
        lambda key, iv, salt, seq: CryptoInfo.create(
            version, cipher, key=key, iv=iv, salt=salt, seq=seq
        ),
        fixed(spec.key_size),
        fixed(spec.iv_size),
        fixed(spec.salt_size),
        seqs,
    )


@dataclass(frozen=True)
class RecSpec:
    """What one record should carry, before it is encrypted."""

    ctype: int
    plaintext: bytes
    pad: int = 0  # TLS 1.3 zero padding
    explicit: bytes = b""  # TLS 1.2 AES explicit nonce (b"": the sequence number)


BIG_SIZES = [255, 256, 1000, 4096, TLS_MAX_PAYLOAD_SIZE - 1, TLS_MAX_PAYLOAD_SIZE]


@st.composite
def rec_specs(
    draw: st.DrawFn, version: int, cipher: CipherType, key_update_odds: int = 12
) -> RecSpec:
    is13 = version == TLS_1_3_VERSION
    if is13 and draw(st.integers(0, key_update_odds - 1)) == 0:
        # A real KeyUpdate handshake message (update_requested 0 or 1).
        return RecSpec(HANDSHAKE, bytes([KEY_UPDATE, 0, 0, 1, draw(st.integers(0, 1))]))
    if draw(st.integers(0, 7)) == 0:
        size = draw(st.sampled_from(BIG_SIZES))
        plaintext = random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(size)
    else:
        plaintext = draw(st.binary(max_size=48))
    # TLS 1.3 carries the type inside the record, where 0 cannot be a type.
    any_type = st.integers(1 if is13 else 0, 255)
    ctype = draw(st.one_of(st.just(DATA), st.sampled_from([20, 21, 22, 23]), any_type))
    pad = 0
    if is13:
        room = TLS_MAX_PAYLOAD_SIZE - len(plaintext)  # inner plaintext <= 2^14 + 1
        pad = min(room, draw(st.sampled_from([0, 0, 0, 1, 7, 300, room])))
    explicit = b""
    if not is13 and cipher != CipherType.CHACHA20_POLY1305 and draw(st.booleans()):
        explicit = draw(st.binary(min_size=8, max_size=8))
    return RecSpec(ctype, plaintext, pad, explicit)


def is_key_update(version: int, content: Content) -> bool:
    ctype, plaintext = content
    return version == TLS_1_3_VERSION and ctype == HANDSHAKE and plaintext[:1] == b"\x18"


@dataclass
class Built:
    """A valid record stream and what each record carries."""

    epochs: list[CryptoInfo]  # RX key per epoch (a TLS 1.3 KeyUpdate starts the next)
    records: list[bytes] = field(default_factory=list)
    contents: list[Content] = field(default_factory=list)
    # (epoch, sequence number) each record was built at
    positions: list[tuple[int, int]] = field(default_factory=list)

    @property
    def stream(self) -> bytes:
        return b"".join(self.records)

    def extent(self, epoch: int) -> int:
        """Records built under ``epoch`` (for picking never-valid sequence numbers)."""
        return sum(1 for e, _ in self.positions if e == epoch)


def build(
    info: CryptoInfo,
    specs: list[RecSpec],
    next_infos: list[CryptoInfo] | None = None,
) -> Built:
    """Encrypt ``specs`` in order with ``tests/helpers/wire.py``.

    With ``next_infos`` (one per possible KeyUpdate, all keys distinct so no
    epoch's records are valid in another) a TLS 1.3 KeyUpdate moves later
    records to the next key, as the socket layer expects; without, one key is used throughout
    (the sans-I/O opener knows nothing of KeyUpdate).  Records that would
    need a sequence number past 2^64-1 are left out.
    """
    built = Built([info])
    seq = info.seq
    for spec in specs:
        if seq > SEQ_MAX:
            break
        cur = built.epochs[-1]
        rec = encrypt_record(
            cur, seq, spec.ctype, spec.plaintext, pad=spec.pad, explicit=spec.explicit
        )
        built.records.append(rec)
        content = (spec.ctype, spec.plaintext)
        built.contents.append(content)
        built.positions.append((len(built.epochs) - 1, seq))
        seq += 1
        if next_infos is not None and is_key_update(info.version, content):
            nxt = next_infos[len(built.epochs) - 1]  # one fresh key per epoch
            built.epochs.append(nxt)
            seq = nxt.seq
    return built


CHUNK_SIZES = st.one_of(
    st.just([1]),  # one byte at a time
    st.lists(
        st.one_of(st.integers(1, 8), st.integers(1, 600), st.integers(1, 40_000)),
        min_size=1,
        max_size=12,
    ),
)


def split(stream: bytes, sizes: list[int]) -> list[bytes]:
    """Cut ``stream`` into chunks of the given sizes, cycling through them."""
    out = []
    i = k = 0
    while i < len(stream):
        n = sizes[k % len(sizes)]
        out.append(stream[i : i + n])
        i += n
        k += 1
    return out


# -- mutations ----------------------------------------------------------------

RECORD_OPS = [
    "dup",
    "swap",
    "drop",
    "move",
    "length",
    "version",
    "type",
    "forge",
    "wrongkey",
    "wrongseq",
]
BYTE_OPS = ["flip", "truncate", "insert", "append", "setbyte", "random"]


def _stray_seq(built: Built, epoch: int, r: int) -> int:
    """A sequence number no record of ``epoch`` can be at: past the gap after
    the last one built (the number right after the last is never built)."""
    return (built.epochs[epoch].seq + built.extent(epoch) + 1 + r) & SEQ_MAX


def _nudge(old: int, d: int) -> int:
    """A record length ``d`` away from ``old``, kept in the u16 range."""
    return max(0, min(0xFFFF, old + d))


def mutate(data: st.DataObject, built: Built, min_len: int) -> bytes:
    """Apply 1..5 random record- and byte-level mutations to ``built``'s stream
    (record-level ones first, on the list of records; then byte-level ones)."""
    recs = [bytearray(r) for r in built.records]
    version = built.epochs[0].version
    cipher = built.epochs[0].cipher

    def index(extra: int = 0) -> int:
        return data.draw(st.integers(0, len(recs) - 1 + extra))

    ops = data.draw(
        st.lists(st.sampled_from(RECORD_OPS + BYTE_OPS), min_size=1, max_size=5), label="ops"
    )
    for op in (o for o in ops if o in RECORD_OPS):
        if not recs and op not in ("forge", "wrongkey", "wrongseq"):
            continue
        if op == "dup":
            recs.insert(index(1), bytearray(recs[index()]))
        elif op == "swap":
            i, j = index(), index()
            recs[i], recs[j] = recs[j], recs[i]
        elif op == "drop":
            del recs[index()]
        elif op == "move":
            rec = recs.pop(index())
            recs.insert(index(1), rec)
        elif op == "length":
            rec = recs[index()]
            old = struct.unpack_from(">H", rec, 3)[0]
            new = data.draw(
                st.one_of(
                    st.integers(0, 0xFFFF),
                    st.integers(-3, 3).map(functools.partial(_nudge, old)),
                    st.sampled_from([0, min_len - 1, min_len, 0x4000, 0x4000 + 0x100, 0xFFFF]),
                )
            )
            struct.pack_into(">H", rec, 3, max(0, new))
        elif op == "version":
            struct.pack_into(">H", recs[index()], 1, data.draw(st.integers(0, 0xFFFF)))
        elif op == "type":
            recs[index()][0] = data.draw(st.integers(0, 255))
        elif op == "forge":
            # Header-valid record with a random body: reaches the AEAD.
            body = data.draw(st.binary(min_size=max(0, min_len - 1), max_size=min_len + 40))
            ctype = data.draw(st.integers(0, 255))
            recs.insert(index(1), bytearray(struct.pack(">BHH", ctype, 0x0303, len(body)) + body))
        elif op == "wrongkey":
            # A well-formed record for the right slot under a key nobody installed.
            spec = CIPHER_SPECS[cipher]
            rnd = random.Random(data.draw(st.integers(0, 2**32 - 1)))
            bad = CryptoInfo.create(
                version,
                cipher,
                key=rnd.randbytes(spec.key_size),
                iv=rnd.randbytes(spec.iv_size),
                salt=rnd.randbytes(spec.salt_size),
            )
            j = index(1)
            seq = built.positions[j][1] if j < len(built.positions) else 0
            recs.insert(j, bytearray(encrypt_record(bad, seq, DATA, b"forged by wrong key")))
        else:  # wrongseq: the right key, a sequence number no valid record is at
            epoch = data.draw(st.integers(0, len(built.epochs) - 1))
            seq = _stray_seq(built, epoch, data.draw(st.integers(0, 3)))
            stray = encrypt_record(built.epochs[epoch], seq, DATA, b"replayed at a wrong seq")
            recs.insert(index(1), bytearray(stray))

    stream = bytearray(b"".join(recs))
    for op in (o for o in ops if o in BYTE_OPS):
        if op == "append":
            stream += data.draw(st.binary(min_size=1, max_size=64))
        elif op == "random":
            stream = bytearray(data.draw(st.binary(max_size=200)))
        elif op == "insert":
            pos = data.draw(st.integers(0, len(stream)))
            stream[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif not stream:
            continue
        elif op == "flip":
            pos = data.draw(st.integers(0, len(stream) - 1))
            stream[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "truncate":
            del stream[data.draw(st.integers(0, len(stream) - 1)) :]
        else:  # setbyte
            stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    return bytes(stream)


def intact_records(built: Built, stream: bytes) -> int:
    """How many leading original records appear unchanged at the start of ``stream``."""
    k = end = 0
    for rec in built.records:
        if stream[end : end + len(rec)] != rec:
            break
        end += len(rec)
        k += 1
    return k


# -- sans-I/O driver -------------------------------------------------------


def run_sans_io(info: CryptoInfo, chunks: list[bytes]) -> tuple[list[Content], OSError | None]:
    """Feed ``chunks`` to a parser and open every whole record.

    A header error from the parser is final (it would be raised again); a
    record that fails to open is dropped and decoding goes on: the opener's
    sequence number advances only on success, so the i-th record returned
    must still be the one built at ``info.seq + i``.  Checks the buffering
    bound after every feed.
    """
    opener = RecordOpener(info)
    parser = RecordParser(opener.max_record_len(), opener.min_record_len())
    one_record = TLS_HEADER_SIZE + parser.max_len
    out: list[Content] = []
    first_error: OSError | None = None
    for chunk in chunks:
        parser.feed(chunk)
        assert parser.buffered < one_record + len(chunk)
        while True:
            try:
                raw = parser.next_record()
            except OSError as exc:
                assert exc.errno in PARSER_ERRNOS, exc
                # Still buffered, never returned: at most the partial record
                # held before this chunk plus the chunk itself.
                assert parser.buffered < one_record + len(chunk)
                return out, first_error or exc
            if raw is None:
                break
            assert TLS_HEADER_SIZE + parser.min_len <= len(raw) <= one_record
            try:
                ctype, plain = opener.open(raw)
            except OSError as exc:
                assert exc.errno == errno.EBADMSG, exc
                first_error = first_error or exc
                continue
            out.append((ctype, bytes(plain)))
        # Everything whole was returned: what is left is less than one record.
        assert parser.buffered < one_record
    return out, first_error


def _opener_limits(info: CryptoInfo) -> tuple[int, int]:
    opener = RecordOpener(info)
    return opener.min_record_len(), opener.max_record_len()


# -- 1. valid streams, any split ------------------------------------------


@pytest.mark.parametrize("vc", COMBOS, ids=combo_id)
@SANS_IO
@given(data=st.data())
def test_valid_stream_any_split(vc: tuple[int, CipherType], data: st.DataObject) -> None:
    version, cipher = vc
    info = data.draw(infos(version, cipher), label="info")
    specs = data.draw(st.lists(rec_specs(version, cipher), max_size=6), label="records")
    built = build(info, specs)
    sizes = data.draw(CHUNK_SIZES, label="chunk sizes")
    out, err = run_sans_io(info, split(built.stream, sizes))
    assert err is None
    assert out == built.contents


# -- 2. mutated streams ---------------------------------------------------


@pytest.mark.parametrize("vc", COMBOS, ids=combo_id)
@SANS_IO
@given(data=st.data())
def test_mutated_stream_never_yields_forged_plaintext(
    vc: tuple[int, CipherType], data: st.DataObject
) -> None:
    version, cipher = vc
    info = data.draw(infos(version, cipher), label="info")
    specs = data.draw(st.lists(rec_specs(version, cipher), min_size=1, max_size=5), label="records")
    built = build(info, specs)
    min_len, _ = _opener_limits(info)
    stream = mutate(data, built, min_len)
    sizes = data.draw(CHUNK_SIZES, label="chunk sizes")
    out, err = run_sans_io(info, split(stream, sizes))
    event(f"error: {errno.errorcode[err.errno] if err and err.errno else None}")
    event(f"records returned: {min(len(out), 3)}{'+' if len(out) >= 3 else ''}")
    # Safety: the i-th plaintext returned is the record built at seq + i.
    assert out == built.contents[: len(out)]
    # Liveness: records before the first changed byte still come out.
    assert len(out) >= intact_records(built, stream)
    if stream == built.stream:
        assert err is None
        assert out == built.contents


@settings(max_examples=10, deadline=None)
@given(
    vc=st.sampled_from(COMBOS),
    chunk=st.integers(200, 5000),
    size=st.integers(0, 100),
)
def test_parser_storage_bounded_on_long_streams(
    vc: tuple[int, CipherType], chunk: int, size: int
) -> None:
    """Over a >1 MiB stream fed so that a partial record is always pending
    (the parser can never clear its buffer), its storage stays bounded."""
    version, cipher = vc
    spec = CIPHER_SPECS[cipher]
    info = CryptoInfo.create(
        version,
        cipher,
        key=bytes(spec.key_size),
        iv=bytes(spec.iv_size),
        salt=bytes(spec.salt_size),
    )
    opener = RecordOpener(info)
    parser = RecordParser(opener.max_record_len(), opener.min_record_len())
    rec = encrypt_record(info, 0, DATA, bytes(size))
    total = (1 << 20) + 3 * (1 << 14)
    stream = rec * (total // len(rec) + 1)
    stream = stream[: len(stream) - 1]  # end inside a record
    one_record = TLS_HEADER_SIZE + parser.max_len
    count = 0
    for piece in split(stream, [chunk]):
        parser.feed(piece)
        while parser.next_record() is not None:
            count += 1
        assert parser.buffered < one_record
        # Consumed bytes are dropped once past 1 MiB: storage stays bounded.
        assert len(parser._buf) <= (1 << 20) + one_record + len(piece)
    assert count == len(stream) // len(rec)


# -- 3. through the socket layer -----------------------------------------


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        c = socket.create_connection(lsock.getsockname())
        s, _ = lsock.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.settimeout(5)
    s.settimeout(5)
    return c, s


def normalize(items: list[Content]) -> list[Content]:
    """What a reader can observe: data records join up, empty data records vanish,
    consecutive records of one control type join too (recvmsg may split one)."""
    out: list[Content] = []
    for ctype, payload in items:
        if ctype == DATA and not payload:
            continue
        if out and out[-1][0] == ctype:
            out[-1] = (ctype, out[-1][1] + payload)
        else:
            out.append((ctype, payload))
    return out


def distinct_keys(first: CryptoInfo, nxt: list[CryptoInfo]) -> list[CryptoInfo]:
    """Give every epoch its own key (hypothesis likes all-zero keys): two epochs
    sharing a key and nonce would make one epoch's records valid in another."""
    seen = {first.key}
    out = []
    for info in nxt:
        key = info.key
        while key in seen:
            key = bytes([(key[0] + 1) & 0xFF]) + key[1:]
        seen.add(key)
        out.append(type(info)(info.version, info.iv, key, info.salt, info.rec_seq))
    return out


def is_prefix(a: list[Content], b: list[Content]) -> bool:
    """``a`` is what a reader would see after reading part of ``b``."""
    if not a:
        return True
    if len(a) > len(b):
        return False
    if a[:-1] != b[: len(a) - 1]:
        return False
    (ta, da), (tb, db) = a[-1], b[len(a) - 1]
    return ta == tb and db.startswith(da)


def _read_one(ks: KTLSSocket, mode: str, bufsize: int) -> tuple[Content, bool]:
    """One read; returns ((type, data), eof).

    The ``*_into`` modes take the zero-copy path (records decrypted straight
    into the caller's buffer); the buffer starts dirty so that a byte the
    layer forgot to write, or wrote past the count, shows up.
    """
    if mode == "recv_into":
        buf = bytearray(b"\xee" * bufsize)
        try:
            n = ks.recv_into(buf)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            return _read_one(ks, "recvmsg_into", bufsize)
        return (DATA, bytes(buf[:n])), n == 0
    if mode == "recvmsg_into":
        buf = bytearray(b"\xee" * bufsize)
        n, anc, _, _ = ks.recvmsg_into([buf], CMSG)
        if not anc:
            assert n == 0
            return (DATA, b""), True
        assert len(anc) == 1 and anc[0][:2] == (SOL_TLS, TLS_GET_RECORD_TYPE)
        return (anc[0][2][0], bytes(buf[:n])), False
    if mode == "recv":
        try:
            got = ks.recv(bufsize)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            # A control record with no room for its cmsg: it stays queued.
            data, anc, _, _ = ks.recvmsg(bufsize, CMSG)
            assert len(anc) == 1 and anc[0][:2] == (SOL_TLS, TLS_GET_RECORD_TYPE)
            assert anc[0][2][0] != DATA
            return (anc[0][2][0], data), False
        return (DATA, got), got == b""
    if mode == "peek":
        # MSG_PEEK first: the read that follows sees the same thing (or more
        # of the same type, if more arrived) and cannot fail where it passed.
        peeked, peek_anc, _, _ = ks.recvmsg(bufsize, CMSG, socket.MSG_PEEK)
        try:
            data, anc, _, _ = ks.recvmsg(bufsize, CMSG)
        except OSError as exc:
            pytest.fail(f"read failed after a successful MSG_PEEK: {exc!r}")
        assert anc == peek_anc and data.startswith(peeked)
    else:
        data, anc, _, _ = ks.recvmsg(bufsize, CMSG)
    if not anc:
        assert data == b""
        return (DATA, b""), True
    assert len(anc) == 1 and anc[0][:2] == (SOL_TLS, TLS_GET_RECORD_TYPE)
    return (anc[0][2][0], data), False


@SOCKETS
@given(data=st.data())
def test_socket_rx_fuzz(data: st.DataObject) -> None:
    version, cipher = data.draw(st.sampled_from(COMBOS), label="version, cipher")
    info = data.draw(infos(version, cipher), label="info")
    next_infos = data.draw(
        st.lists(infos(version, cipher), min_size=MAX_RECORDS, max_size=MAX_RECORDS),
        label="next keys",
    )
    next_infos = distinct_keys(info, next_infos)
    specs = data.draw(
        st.lists(rec_specs(version, cipher, key_update_odds=4), min_size=1, max_size=MAX_RECORDS),
        label="records",
    )
    built = build(info, specs, next_infos)
    min_len, _ = _opener_limits(info)
    stream = mutate(data, built, min_len) if data.draw(st.integers(0, 2)) else built.stream
    chunks = split(stream, data.draw(CHUNK_SIZES, label="chunk sizes"))
    if len(chunks) > 400:  # keep one-byte TCP writes cheap on large streams
        chunks = [*chunks[:400], stream[sum(map(len, chunks[:400])) :]]
    mode = data.draw(
        st.sampled_from(["recv", "recvmsg", "peek", "recv_into", "recvmsg_into"]), label="mode"
    )
    bufsize = data.draw(st.sampled_from([1, 5, 100, 4096, 65536]), label="bufsize")
    if bufsize < 100 and len(stream) > 5000:
        bufsize = 4096

    c, s = _tcp_pair()
    ks = KTLSSocket(s, backend="sw")

    def write() -> None:
        try:
            for piece in chunks:
                c.sendall(piece)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the reader gave up and closed: fine

    writer = threading.Thread(target=write, daemon=True)
    try:
        ks.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        ks.setsockopt(SOL_TLS, TLS_RX, info.pack())
        ks.settimeout(5)  # a hang shows up as TimeoutError, which fails the test
        writer.start()
        received: list[Content] = []
        epoch = 0
        error: OSError | None = None
        eof = False
        for _ in range(len(stream) + 1000):
            try:
                item, eof = _read_one(ks, mode, bufsize)
            except OSError as exc:
                assert exc.errno is not None, f"{exc!r} (a hang?)"
                if exc.errno == errno.EKEYEXPIRED:
                    # Only right after a whole KeyUpdate record was delivered.
                    seen = normalize(received)
                    assert any(
                        is_key_update(version, content)
                        and seen == normalize(built.contents[: i + 1])
                        for i, content in enumerate(built.contents)
                    ), seen
                    epoch += 1
                    ks.setsockopt(SOL_TLS, TLS_RX, built.epochs[epoch].pack())
                    continue
                assert exc.errno in STICKY_ERRNOS, exc
                error = exc
                break
            if eof:
                break
            received.append(item)
        else:
            pytest.fail("reader neither reached EOF nor an error")

        if isinstance(error, StreamAbort):
            # tls_err_abort (framing error, rec_seq wrap): reported once, then
            # the parser is stopped: only EOF (the writer has shut down).
            for _ in range(2):
                assert _read_one(ks, mode, bufsize)[1], "data after a stream abort"
        elif error is not None:
            # A bad record (tag): sticky, every later read fails the same way.
            for _ in range(2):
                with pytest.raises(OSError) as again:
                    _read_one(ks, mode, bufsize)
                assert again.value.errno == error.errno
        else:
            assert eof
            assert _read_one(ks, mode, bufsize)[1], "EOF is not repeated"

        event(f"end: {errno.errorcode[error.errno] if error and error.errno else 'EOF'}")
        event(f"key updates: {epoch}")
        got = normalize(received)
        # Safety: nothing but the plaintext of valid records, in order.
        assert is_prefix(got, normalize(built.contents)), (got, built.contents)
        # Liveness: the records before the first changed byte were delivered.
        intact = normalize(built.contents[: intact_records(built, stream)])
        assert is_prefix(intact, got), (intact, got)
        if stream == built.stream:
            assert got == normalize(built.contents)
            # A valid stream may end on the record numbered 2^64-1; Linux then
            # reports the sequence wrap once (a StreamAbort), nothing else.
            assert error is None or (
                isinstance(error, StreamAbort) and error.errno == errno.EBADMSG
            ), error
    finally:
        ks.close()
        c.close()
        writer.join(5)


def test_peeked_data_still_delivered_after_a_later_bad_record() -> None:
    """Minimal reproducer of what the fuzzer's ``peek`` mode found.

    MSG_PEEK decrypts ahead and keeps records queued; when it then hits a bad
    record the error is made sticky, and the next plain recv raises it
    without delivering the valid data the peek just showed (Linux serves
    ``rx_list`` before looking at the socket error).
    """
    info = CryptoInfo.create(
        TLS_1_2_VERSION, CipherType.AES_GCM_128, key=bytes(16), iv=bytes(8), salt=bytes(4)
    )
    c, s = _tcp_pair()
    with KTLSSocket(s, backend="sw") as ks, c:
        ks.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        ks.setsockopt(SOL_TLS, TLS_RX, info.pack())
        bad = bytearray(encrypt_record(info, 1, DATA, b"forged"))
        bad[-1] ^= 1
        c.sendall(encrypt_record(info, 0, DATA, b"valid data") + bytes(bad))
        c.shutdown(socket.SHUT_WR)
        got = b""
        while len(got) < 10:  # the two records may arrive in separate reads
            got = ks.recv(100, socket.MSG_PEEK)
        assert got == b"valid data"
        assert ks.recv(100) == b"valid data"  # fails: EBADMSG, the data is lost
        with pytest.raises(OSError) as e:
            ks.recv(100)
        assert e.value.errno == errno.EBADMSG
