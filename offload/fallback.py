"""Software fallback for a segment that reaches a device without the context.

Mirrors net/tls/tls_device_fallback.c: when an offloaded connection's
segment leaves through another device (a bond slave, a redirect), the host
encrypts it itself.  It cannot resume a NIC's state, so every record the
segment touches is encrypted from its start (``tls_get_record``), and only
the bytes that fall inside the segment are kept; the rest (the record's
earlier bytes and the tag, when outside) is discarded.
"""

from __future__ import annotations

from collections.abc import Callable

from offload.netdev import RecordLookup, Segment
from offload.record import RecordSealer
from offload.tcpseq import seq_add, seq_diff
from offload.uapi import TLS_HEADER_SIZE, CryptoInfo


def sw_fallback(
    key_at: Callable[[int], CryptoInfo], segment: Segment, lookup: RecordLookup, out: memoryview
) -> bool:
    """The segment's bytes as software TX would have put them on the wire.

    ``key_at(start_seq)`` is the TX crypto_info (key, salt/iv) of the
    record starting at ``start_seq`` (one key for the connection, unless
    the device context was rekeyed: ``DeviceTx.key_at``); sequence numbers
    and explicit nonces come from the records themselves.  Writes
    into ``out``; returns False when a record the segment needs was already
    freed (the kernel drops such a packet too).  Plain data before the start
    marker passes unchanged.
    """
    n = len(segment)
    if lookup.before_start_marker(segment.seq, n):
        out[:n] = segment.payload
        return True
    pos = 0
    while pos < n:
        rec = lookup.get_record(seq_add(segment.seq, pos))
        if rec is None:
            return False
        start_in_rec = seq_diff(seq_add(segment.seq, pos), rec.start_seq)
        sealed = _seal_record(key_at(rec.start_seq), rec.record_sn, rec.data)
        take = min(len(rec.data) - start_in_rec, n - pos)
        out[pos : pos + take] = sealed[start_in_rec : start_in_rec + take]
        pos += take
    return True


def _seal_record(info: CryptoInfo, record_sn: int, framed: memoryview) -> bytearray:
    """Encrypt one framed plaintext record (header, explicit nonce, tag space).

    The explicit nonce is the one the layer framed into the record, so the
    result is byte-for-byte what software TX produced for that record.
    """
    sealer = RecordSealer(info.with_seq(record_sn))
    prot = sealer.prot
    if prot.explicit_size:
        sealer.explicit = int.from_bytes(framed[TLS_HEADER_SIZE : prot.prepend_size], "big")
    out = bytearray(framed)
    n = len(framed) - prot.overhead_size
    # TLS 1.3: the real type is the inner one, after the plaintext.
    ctype = framed[prot.prepend_size + n] if prot.is13 else framed[0]
    sealer.seal_in_place(out, ctype, n)
    return out
