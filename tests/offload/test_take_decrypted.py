"""``RecordOpener.take_decrypted_into``: the bulk take of NIC-decrypted records.

The bulk take checks a run of equal records all at once
(``_uniform_run``: each header byte and TLS 1.3 inner-type byte gathered
across the run with a strided slice) and then copies one slice per record.
Whatever the stream, it must do exactly what the one-record-at-a-time
loop does: the same records taken, the same bytes written, the same state
left (sequence number, explicit nonce, what the parser still holds).  The
reference below is that loop, written plainly from the method's contract.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from offload.framing import RECORD_VERSION
from offload.record import RecordOpener, RecordParser
from offload.uapi import (
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_HEADER_SIZE,
    CipherType,
    ContentType,
    CryptoInfo,
)

DATA = int(ContentType.APPLICATION_DATA)
SEQ_MASK = (1 << 64) - 1
HDR = struct.Struct(">BHH")


def reference(
    opener: RecordOpener, parser: RecordParser, dst: memoryview, covered: int
) -> tuple[int, int, int]:
    """(records, bytes written, bytes consumed) as the contract says, record
    by record, changing nothing."""
    mv = parser.pending()[:covered]
    tag, ex, is13 = opener.tag_size, opener.explicit_size, opener.is13
    pos = off = nrec = 0
    seq = opener.seq
    while len(mv) - pos >= TLS_HEADER_SIZE:
        ctype, version, length = HDR.unpack_from(mv, pos)
        nxt = pos + TLS_HEADER_SIZE + length
        if (
            ctype != DATA
            or version != RECORD_VERSION
            or not parser.min_len <= length <= parser.max_len
            or nxt > len(mv)
            or seq == SEQ_MASK
        ):
            break
        n = length - ex - tag - int(is13)
        if n < 0 or (is13 and mv[pos + TLS_HEADER_SIZE + ex + n] != DATA):
            break
        if n > len(dst) - off:
            break
        body = pos + TLS_HEADER_SIZE + ex
        dst[off : off + n] = mv[body : body + n]
        off, pos, seq, nrec = off + n, nxt, seq + 1, nrec + 1
    return nrec, off, pos


KINDS = ["handshake", "padded", "version", "long", "size"]


@settings(max_examples=400, deadline=None)
@given(
    version=st.sampled_from([TLS_1_2_VERSION, TLS_1_3_VERSION]),
    cipher=st.sampled_from([CipherType.AES_GCM_128, CipherType.CHACHA20_POLY1305]),
    size=st.sampled_from([0, 1, 300, 4096]),
    count=st.integers(0, 40),
    odd=st.lists(st.tuples(st.integers(0, 39), st.sampled_from(KINDS)), max_size=3),
    cut=st.integers(0, 64),
    covered_less=st.sampled_from([0, 0, 1, 400, 5000]),
    room=st.sampled_from([0, 299, 900, 5000, 60000, 1 << 20]),
    near_wrap=st.booleans(),
    wrap_at=st.integers(0, 30),
)
def test_bulk_take_is_the_record_by_record_take(
    version: int,
    cipher: CipherType,
    size: int,
    count: int,
    odd: list[tuple[int, str]],
    cut: int,
    covered_less: int,
    room: int,
    near_wrap: bool,
    wrap_at: int,
) -> None:
    seq = SEQ_MASK - wrap_at if near_wrap else 5
    info = CryptoInfo.random(version, cipher, seq=seq)
    ours, theirs = RecordOpener(info), RecordOpener(info)
    ex, tag, is13 = ours.explicit_size, ours.tag_size, ours.is13
    kinds = {i % max(count, 1): k for i, k in odd}  # equal records, a few of them odd
    records = [
        (size + 1 if kinds.get(i) == "size" else size, kinds.get(i, "data")) for i in range(count)
    ]
    stream = bytearray()
    for i, (n, kind) in enumerate(records):
        body = bytes((i + j) % 251 for j in range(n))
        inner = b""
        if is13:
            inner = bytes([DATA]) if kind != "handshake" else bytes([ContentType.HANDSHAKE])
            if kind == "padded":
                inner += b"\0\0"
        ctype = DATA if is13 or kind != "handshake" else int(ContentType.HANDSHAKE)
        length = ex + len(body) + len(inner) + tag
        if kind == "long":
            length = 1 << 15  # beyond the parser's bound
        vers = 0x0301 if kind == "version" else RECORD_VERSION
        stream += HDR.pack(ctype, vers, length) + bytes(ex) + body + inner + bytes(tag)
    del stream[max(0, len(stream) - cut) :]  # the last record may be cut
    parsers = []
    for _ in range(2):
        p = RecordParser()
        p.feed(bytes(stream))
        parsers.append(p)
    covered = max(0, len(stream) - covered_less)
    dst_ours, dst_theirs = bytearray(room), bytearray(room)
    want = reference(theirs, parsers[1], memoryview(dst_theirs), covered)
    nrec, off = ours.take_decrypted_into(parsers[0], memoryview(dst_ours), covered)
    assert (nrec, off) == want[:2]
    assert dst_ours[:off] == dst_theirs[:off]
    assert parsers[0].buffered == len(stream) - want[2]
    assert ours.seq == seq + nrec
    if ex:
        assert ours.explicit == (theirs.explicit + nrec) & SEQ_MASK
