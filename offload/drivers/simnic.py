"""``sim-nic``: a simulated TLS TX offload NIC (mlx5-like, TLS 1.2 and 1.3).

Per context the NIC holds only what hardware holds: the key, the salt/IV,
the TCP sequence number it expects next, and the state of the record it is
in the middle of (a few header bytes, how much body and tag is left, the
running AEAD state, the record number).  It never keeps record data.

* Fast path - ``seq == expected``: walk the segment; a record wholly inside
  the segment takes the one-shot AEAD straight into the output (what a TSO
  segment holding whole records costs); a record cut by a segment edge goes
  through the streaming AEAD, whose state carries into the next segment.
* Slow path - ``seq != expected`` (retransmission, reordering): packets
  wholly before the start marker go out untouched (skip); otherwise the
  record holding ``seq`` is looked up (``tls_get_record``) and its bytes
  before ``seq`` are fed through the AEAD with the output discarded (DUMP
  work, as mlx5 posts it) to rebuild the state, then the segment is
  encrypted.  A record already acknowledged and freed cannot be rebuilt:
  the packet is dropped (tx_tls_drop_no_sync_data).

AES-GCM streams with ``Cipher(AES, GCM)``; ChaCha20-Poly1305 streams as
ChaCha20 plus an incremental Poly1305 (RFC 8439 construction).  AES-CCM has
no streaming form here and is refused at ``dev_add``, so the layer falls
back to software TX for it.  Upstream NICs offload TLS 1.2 only; this one
does TLS 1.3 too (nonce = IV xor record number, AAD = record header).
"""

from __future__ import annotations

import struct
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.poly1305 import Poly1305

from offload.netdev import (
    TLS_OFFLOAD_CTX_DIR_TX,
    DeviceStats,
    OffloadRefused,
    RecordLookup,
    Segment,
)
from offload.tcpseq import seq_add, seq_diff
from offload.uapi import TLS_1_2_VERSION, TLS_1_3_VERSION, CipherType, CryptoInfo

_AAD12 = struct.Struct(">QBHH")
_HDR = 5
_TAG = 16
_HEADER, _BODY, _TAGPHASE = 0, 1, 2


class _GcmStream:
    """AES-GCM carried across segment boundaries."""

    __slots__ = ("_enc",)

    def __init__(self, key: algorithms.AES, nonce: bytes, aad: bytes) -> None:
        self._enc = Cipher(key, modes.GCM(nonce)).encryptor()
        self._enc.authenticate_additional_data(aad)

    def update(self, data: memoryview) -> bytes:
        return self._enc.update(data)

    def finish(self) -> bytes:
        self._enc.finalize()
        return self._enc.tag


class _ChachaStream:
    """ChaCha20-Poly1305 (RFC 8439) carried across segment boundaries."""

    __slots__ = ("_aad_len", "_ct_len", "_enc", "_mac")

    def __init__(self, key: bytes, nonce: bytes, aad: bytes) -> None:
        block0 = Cipher(algorithms.ChaCha20(key, b"\0\0\0\0" + nonce), None).encryptor()
        self._mac = Poly1305(block0.update(bytes(32)))
        self._enc = Cipher(algorithms.ChaCha20(key, b"\1\0\0\0" + nonce), None).encryptor()
        self._mac.update(aad + bytes(-len(aad) % 16))
        self._aad_len = len(aad)
        self._ct_len = 0

    def update(self, data: memoryview) -> bytes:
        ct = self._enc.update(data)
        self._mac.update(ct)
        self._ct_len += len(ct)
        return ct

    def finish(self) -> bytes:
        mac = self._mac
        mac.update(bytes(-self._ct_len % 16))
        mac.update(struct.pack("<QQ", self._aad_len, self._ct_len))
        return mac.finalize()


class SimNicContext:
    """One offloaded TX connection's state inside the NIC (no record data)."""

    __slots__ = (
        "aes",
        "body_left",
        "cipher",
        "expected",
        "explicit_size",
        "hdr",
        "key",
        "oneshot",
        "phase",
        "record_sn",
        "salt",
        "static_iv",
        "stream",
        "tag",
        "tag_left",
        "version",
    )

    def __init__(self, info: CryptoInfo, start_tcp_seq: int) -> None:
        self.version = info.version
        self.cipher = info.cipher
        self.key = info.key
        self.aes = algorithms.AES(info.key) if info.cipher != CipherType.CHACHA20_POLY1305 else None
        self.salt = info.salt
        self.static_iv = int.from_bytes(info.salt + info.iv, "big")
        self.explicit_size = info.spec.explicit_nonce_size(info.version)
        self.oneshot: Any = (
            ChaCha20Poly1305(info.key)
            if info.cipher == CipherType.CHACHA20_POLY1305
            else AESGCM(info.key)
        )
        self.expected = start_tcp_seq
        self.record_sn = info.seq
        self.reset()

    def reset(self) -> None:
        """At a record boundary, nothing in flight."""
        self.phase = _HEADER
        self.hdr = bytearray()
        self.body_left = 0
        self.tag_left = 0
        self.tag = b""
        self.stream: _GcmStream | _ChachaStream | None = None

    def header_len(self) -> int:
        return _HDR + self.explicit_size

    def nonce_aad(self, hdr: bytes | bytearray | memoryview, body_len: int) -> tuple[bytes, bytes]:
        """Nonce and AAD for the record whose header (and explicit nonce) is ``hdr``."""
        sn = self.record_sn
        if self.version == TLS_1_3_VERSION:
            return (self.static_iv ^ sn).to_bytes(12, "big"), bytes(hdr[:_HDR])
        aad = _AAD12.pack(sn, hdr[0], TLS_1_2_VERSION, body_len)
        if self.explicit_size:
            return self.salt + bytes(hdr[_HDR : _HDR + self.explicit_size]), aad
        return (self.static_iv ^ sn).to_bytes(12, "big"), aad

    def start_stream(self, hdr: bytes | bytearray | memoryview, body_len: int) -> None:
        nonce, aad = self.nonce_aad(hdr, body_len)
        if self.aes is None:
            self.stream = _ChachaStream(self.key, nonce, aad)
        else:
            self.stream = _GcmStream(self.aes, nonce, aad)


class SimNic:
    """The ``sim-nic`` driver (entry point ``offload.drivers: sim-nic``)."""

    name = "sim-nic"
    supported = frozenset(
        {CipherType.AES_GCM_128, CipherType.AES_GCM_256, CipherType.CHACHA20_POLY1305}
    )

    def __init__(self) -> None:
        self.stats = DeviceStats()

    def dev_add(self, direction: int, info: CryptoInfo, start_tcp_seq: int) -> SimNicContext:
        if direction != TLS_OFFLOAD_CTX_DIR_TX:
            raise OffloadRefused("sim-nic offloads TX only")
        if info.cipher not in self.supported:
            raise OffloadRefused(f"sim-nic cannot stream {info.cipher.name}")
        self.stats.inc("tx_tls_ctx")
        return SimNicContext(info, start_tcp_seq)

    def dev_del(self, ctx: object) -> None:
        self.stats.inc("tx_tls_del")

    def dev_resync(self, ctx: object, tcp_seq: int, record_sn: int) -> None:
        """The record starting at ``tcp_seq`` has number ``record_sn``."""
        if not isinstance(ctx, SimNicContext):
            raise TypeError("not a sim-nic context")
        ctx.reset()
        ctx.expected = tcp_seq
        ctx.record_sn = record_sn

    def xmit(
        self, ctx: object, segment: Segment, lookup: RecordLookup, out: memoryview
    ) -> bool:
        if not isinstance(ctx, SimNicContext):
            raise TypeError("not a sim-nic context")
        n = len(segment)
        stats = self.stats
        if n == 0:
            return True
        if segment.seq != ctx.expected:
            if lookup.before_start_marker(segment.seq, n):
                stats.inc("tx_tls_skip_no_sync_data")
                out[:n] = segment.payload
                return True
            rec = lookup.get_record(segment.seq)
            if rec is None:
                stats.inc("tx_tls_drop_no_sync_data")
                return False
            stats.inc("tx_tls_ooo")
            ctx.reset()
            ctx.record_sn = rec.record_sn
            prefix = seq_diff(segment.seq, rec.start_seq)
            if prefix:
                stats.inc("tx_tls_dump_packets")
                stats.inc("tx_tls_dump_bytes", prefix)
                self._walk(ctx, rec.data[:prefix], None)
            stats.inc("tx_tls_resync_bytes", n)
        self._walk(ctx, segment.payload, out)
        ctx.expected = seq_add(segment.seq, n)
        stats.inc("tx_tls_encrypted_packets")
        stats.inc("tx_tls_encrypted_bytes", n)
        return True

    def _walk(self, ctx: SimNicContext, data: memoryview, out: memoryview | None) -> None:
        """Run ``data`` through the record state machine; write to ``out``
        (None: DUMP work, processed and discarded)."""
        pos = 0
        n = len(data)
        hlen = ctx.header_len()
        while pos < n:
            if ctx.phase == _HEADER:
                if not ctx.hdr and out is not None:
                    pos = self._whole_records(ctx, data, out, pos)
                    if pos >= n:
                        break
                take = min(hlen - len(ctx.hdr), n - pos)
                ctx.hdr += data[pos : pos + take]
                if out is not None:  # header and explicit nonce go out as they are
                    out[pos : pos + take] = data[pos : pos + take]
                pos += take
                if len(ctx.hdr) == hlen:
                    length = int.from_bytes(ctx.hdr[3:5], "big")
                    ctx.body_left = length - ctx.explicit_size - _TAG
                    ctx.start_stream(ctx.hdr, ctx.body_left)
                    ctx.phase = _BODY
                    if ctx.body_left == 0:
                        self._end_body(ctx)
            elif ctx.phase == _BODY:
                take = min(ctx.body_left, n - pos)
                if ctx.stream is None:
                    raise RuntimeError("sim-nic: record body without a running AEAD")
                ct = ctx.stream.update(data[pos : pos + take])
                if out is not None:
                    out[pos : pos + take] = ct
                pos += take
                ctx.body_left -= take
                if ctx.body_left == 0:
                    self._end_body(ctx)
            else:
                take = min(ctx.tag_left, n - pos)
                if out is not None:
                    done = _TAG - ctx.tag_left
                    out[pos : pos + take] = ctx.tag[done : done + take]
                pos += take
                ctx.tag_left -= take
                if ctx.tag_left == 0:
                    ctx.record_sn += 1
                    ctx.reset()

    @staticmethod
    def _whole_records(ctx: SimNicContext, data: memoryview, out: memoryview, pos: int) -> int:
        """One-shot AEAD for every record wholly inside ``data[pos:]``.

        The TSO fast path: such records need no carried state, so each is a
        single ``encrypt_into`` from the segment to the wire buffer.  Returns
        where the first record that does not fit (or the segment) ends.
        """
        n = len(data)
        ex = ctx.explicit_size
        hlen = _HDR + ex
        enc = ctx.oneshot.encrypt_into
        sn = ctx.record_sn
        iv = ctx.static_iv
        salt = ctx.salt
        is13 = ctx.version == TLS_1_3_VERSION
        pack = _AAD12.pack
        while n - pos >= hlen:
            end = pos + _HDR + ((data[pos + 3] << 8) | data[pos + 4])
            if end > n:
                break
            b = pos + hlen
            body_len = end - b - _TAG
            out[pos:b] = data[pos:b]
            if is13:
                nonce = (iv ^ sn).to_bytes(12, "big")
                aad: bytes | memoryview = data[pos:b]
            else:
                if ex:
                    nonce = salt + data[pos + _HDR : b].tobytes()
                else:
                    nonce = (iv ^ sn).to_bytes(12, "big")
                aad = pack(sn, data[pos], TLS_1_2_VERSION, body_len)
            enc(nonce, data[b : end - _TAG], aad, out[b:end])
            sn += 1
            pos = end
        ctx.record_sn = sn
        return pos

    @staticmethod
    def _end_body(ctx: SimNicContext) -> None:
        if ctx.stream is None:
            raise RuntimeError("sim-nic: record end without a running AEAD")
        ctx.tag = ctx.stream.finish()
        ctx.stream = None
        ctx.phase = _TAGPHASE
        ctx.tag_left = _TAG


def create() -> SimNic:
    """Entry-point factory."""
    return SimNic()
