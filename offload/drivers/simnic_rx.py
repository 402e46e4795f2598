"""``sim-nic`` receive offload: decrypt and authenticate records in received segments.

Per RX context the NIC holds what mlx5's RX tracker holds: the key, the
TCP sequence number it expects next, where the current record is (header
bytes so far, body and tag left), the running AEAD state of that record
and its record number.  It keeps no record data beyond the few header and
tag bytes a segment edge may cut.

Per packet (tls-offload.rst, "Error handling, RX"): either *every* record
byte in the packet is decrypted - and every tag ending in it checks - and
the plaintext replaces the payload with the packet marked decrypted (the
skb's ``decrypted`` bit), or the packet reaches the host exactly as it was
on the wire, unmarked.  The NIC decrypts into its own scratch copy of the
packet and writes it over the payload only when the whole packet
succeeded, so a bad tag never leaves a modified byte behind ("recovering
original packet in the driver ... is sufficient").  Earlier packets of a
record whose tag then fails were already handed over decrypted, as on
mlx5: the host finds that record mixed, re-encrypts it and its software
path reports EBADMSG (``offload.tls_device_rx``).

Sync states, all per context:

* in sync - the NIC knows where records start and their numbers and
  decrypts in order; a segment older than the one expected (a
  duplicate, a late retransmission) passes untouched and changes nothing;
  a segment after a gap (loss, reorder) ends the sync;
* out of sync, by the context's scheme (``offload.netdev.RxSyncType``):
  DRIVER_REQ and DRIVER_REQ_ASYNC scan each packet for a plausible header
  (version 0x0303, a length a record may have), follow the header chain
  from there (counting records, decrypting nothing) and ask the stack to
  confirm the candidate (``resync_request`` / ``resync_async_start`` and,
  one packet later as mlx5's GET_PSV completion, ``resync_async_end``);
  the stack's ``dev_resync`` answer gives the candidate's record number
  and the NIC adds the records it counted since.  A chain that breaks (an
  implausible header where the chain says one starts) or stays
  unconfirmed for ``RESCAN_RECORDS`` records is dropped and the scan
  restarts: the false header (payload bytes that look like a header) is
  never confirmed - the stack answers only for records it parsed - so it
  never decrypts anything.  CORE_NEXT_HINT waits for the stack's hint
  (``dev_resync`` with the next record's start) and starts there.

TLS 1.3 KeyUpdate: the inner type is encrypted, so only a party that
decrypted a record knows it is a handshake record.  The NIC, having
decrypted one, stops there (paused: nothing more decrypted, no scan) and
waits for the stack: a NewSessionTicket gets a ``dev_resync`` hint to go
on with the same key; a KeyUpdate gets the context deleted and a new one
added with the next key once user space installs it (Linux has no device
rekey: upstream offloads only TLS 1.2).

Counters (mlx5 names; where this NIC's meaning is its own it says so):
``rx_tls_decrypted_packets/_bytes`` packets marked decrypted and their
payload bytes; ``rx_tls_err`` records whose tag failed on the NIC;
``rx_tls_resync_req_pkt`` packets in which the NIC found a candidate and
asked the stack; ``_req_start``/``_req_end`` async requests opened and
closed; ``_req_skip`` candidates the NIC dropped unconfirmed (broken
chain, timeout, a gap); ``_res_ok`` resync answers or hints the NIC took;
``_res_retry`` hints for a sequence number the NIC had already passed (it
waits for the next); ``_res_skip`` answers it could not use (for a
candidate it no longer follows, or while in sync).
"""

from __future__ import annotations

import hmac
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from offload.drivers.simnic import _ChachaStream
from offload.framing import HEADER, RECORD_VERSION, ProtInfo
from offload.netdev import DeviceStats, RxResyncHost, RxSyncType, Segment
from offload.tcpseq import seq_before, seq_diff
from offload.uapi import TLS_HEADER_SIZE, CipherType, ContentType, CryptoInfo

_HEADER, _BODY, _TAG = 0, 1, 2
_SEQ_MASK = 0xFFFFFFFF
_APPDATA = int(ContentType.APPLICATION_DATA)
_TYPES12 = frozenset(
    int(t)
    for t in (
        ContentType.CHANGE_CIPHER_SPEC,
        ContentType.ALERT,
        ContentType.HANDSHAKE,
        ContentType.APPLICATION_DATA,
    )
)
_TYPES13 = frozenset({_APPDATA})

RESCAN_RECORDS = 16
"""Records a candidate header chain is followed unconfirmed before the NIC
drops it and scans again (tls-offload.rst: "The implementation may choose
to periodically restart scan")."""


class _Open(Protocol):
    """A running AEAD opening one record across segments."""

    def update(self, data: memoryview, /) -> bytes: ...

    def verify(self, tag: bytes, /) -> bool: ...


class _GcmOpen:
    """AES-GCM decryption carried across segment edges (cryptography's
    streaming decryptor: GHASH over the ciphertext it is fed)."""

    __slots__ = ("_dec",)

    def __init__(self, key: bytes, nonce: bytes, aad: bytes) -> None:
        self._dec = Cipher(algorithms.AES(key), modes.GCM(nonce)).decryptor()
        self._dec.authenticate_additional_data(aad)

    def update(self, data: memoryview) -> bytes:
        return self._dec.update(data)

    def verify(self, tag: bytes) -> bool:
        try:
            self._dec.finalize_with_tag(tag)
        except InvalidTag:
            return False
        return True


class _ChachaOpen(_ChachaStream):
    """ChaCha20-Poly1305 opening: the TX stream's construction with the MAC
    over the ciphertext fed in (ChaCha20 is its own inverse)."""

    __slots__ = ()

    def update(self, data: memoryview) -> bytes:
        self._mac.update(data)
        self._ct_len += len(data)
        out: bytes = self._enc.update(data)
        return out

    def verify(self, tag: bytes) -> bool:
        self.finalize()
        return hmac.compare_digest(self.tag, tag)


class SimNicRxContext:
    """One offloaded RX connection's state inside the NIC (no record data)."""

    def __init__(self, info: CryptoInfo, start_tcp_seq: int, sync_type: RxSyncType) -> None:
        self.info = info
        self.prot = ProtInfo.from_info(info)
        self.sync_type = sync_type
        self.hlen = self.prot.prepend_size
        self.tag_size = self.prot.tag_size
        self.is13 = self.prot.is13
        self.types = _TYPES13 if self.is13 else _TYPES12
        self.scratch = bytearray()  # where a packet is decrypted before it is written back
        self._aead: AESGCM | ChaCha20Poly1305 | None = None  # made at the first whole record
        self.max_len = self.prot.max_body_len()
        self.min_len = self.prot.min_body_len()
        self.expected = start_tcp_seq
        self.tracking = True  # record boundaries known from ``expected`` on
        self.synced = True  # ... and their record numbers
        self.paused = False
        self.record_sn = info.seq
        self.candidate: int | None = None
        self.since = 0  # records completed since the candidate
        self.rescan_records = RESCAN_RECORDS
        """How long a candidate is followed unconfirmed (the real wire's NIC
        waits longer: its stack answers across a process boundary)."""
        self.async_end_due = False
        self.hint: tuple[int, int] | None = None
        self.reset_record()

    def reset_record(self) -> None:
        self.phase = _HEADER
        self.hdr = bytearray()
        self.body_left = 0
        self.tag_left = 0
        self.tagbuf = bytearray()
        self.stream: _Open | None = None
        self.last_nz = -1  # TLS 1.3: the last non-zero plaintext byte seen

    def open_stream(self) -> _Open:
        """The running AEAD of the record whose header is ``hdr``."""
        nonce, aad = self._nonce_aad()
        if self.info.cipher == CipherType.CHACHA20_POLY1305:
            return _ChachaOpen(self.info.key, nonce, aad)
        return _GcmOpen(self.info.key, nonce, aad)

    def aead(self) -> AESGCM | ChaCha20Poly1305:
        """The one-shot AEAD of this context's key (made once, at first use)."""
        if self._aead is None:
            key = self.info.key
            self._aead = (
                ChaCha20Poly1305(key)
                if self.info.cipher == CipherType.CHACHA20_POLY1305
                else AESGCM(key)
            )
        return self._aead

    def open_whole(self, sealed: memoryview, out: memoryview) -> bool:
        """The record whose header is ``hdr``, body and tag all in ``sealed``
        (one packet holds the rest of it): its plaintext into ``out`` in one
        pass, False when the tag fails (``out`` then holds nothing of use).
        The same AEAD as ``open_stream`` fed the same bytes, in one call."""
        nonce, aad = self._nonce_aad()
        try:
            self.aead().decrypt_into(nonce, sealed, aad, out)
        except InvalidTag:
            return False
        return True

    def _nonce_aad(self) -> tuple[bytes, bytes]:
        prot, sn, hdr = self.prot, self.record_sn, bytes(self.hdr)
        nonce = prot.nonce(sn, hdr[TLS_HEADER_SIZE : self.hlen])
        return nonce, prot.aad(sn, hdr[0], self.body_left)


class SimNicRx:
    """The receive half of the ``sim-nic`` driver (see the module docstring)."""

    def __init__(self, stats: DeviceStats) -> None:
        self.stats = stats

    def dev_add(self, info: CryptoInfo, start_tcp_seq: int, sync: RxSyncType) -> SimNicRxContext:
        self.stats.inc("rx_tls_ctx")
        return SimNicRxContext(info, start_tcp_seq, sync)

    def dev_del(self, ctx: SimNicRxContext) -> None:
        self.stats.inc("rx_tls_del")

    def dev_resync(self, ctx: SimNicRxContext, tcp_seq: int, record_sn: int) -> None:
        """The record starting at ``tcp_seq`` is number ``record_sn``: the
        answer to the candidate the NIC follows, or a hint for later."""
        st = self.stats
        if ctx.candidate is not None and ctx.tracking and tcp_seq == ctx.candidate:
            ctx.synced = True
            ctx.record_sn = record_sn + ctx.since
            ctx.candidate = None
            ctx.async_end_due = False
            st.inc("rx_tls_resync_res_ok")
            return
        if ctx.synced and not ctx.paused:
            st.inc("rx_tls_resync_res_skip")
            return
        ctx.hint = (tcp_seq, record_sn)

    def rx(self, ctx: SimNicRxContext, segment: Segment, host: RxResyncHost) -> bool:
        """Decrypt the segment in place and return True, or leave it as it
        came and return False (see the module docstring)."""
        data = segment.payload
        n = len(data)
        seq = segment.seq
        if n == 0:
            return False
        if ctx.async_end_due and ctx.candidate is not None:
            ctx.async_end_due = False
            self.stats.inc("rx_tls_resync_req_end")
            host.resync_async_end(ctx.candidate)
        if ctx.tracking and seq != ctx.expected:
            if not seq_before(ctx.expected, (seq + n) & _SEQ_MASK):
                return False  # wholly before what the NIC expects: a duplicate
            self._lose_tracking(ctx)
        if len(ctx.scratch) < n:
            ctx.scratch = bytearray(n)
        out = memoryview(ctx.scratch)[:n]
        handled, ok = True, True
        start = 0
        if not ctx.tracking:
            start = self._find_start(ctx, seq, data, host)
            if start < 0:
                return False
            handled = start == 0 and ctx.synced
        h, ok = self._walk(ctx, data[start:], memoryview(out)[start:])
        handled = handled and h
        ctx.expected = (seq + n) & _SEQ_MASK
        if not (handled and ok):
            return False
        data[:] = out
        self.stats.inc_pair("rx_tls_decrypted_packets", 1, "rx_tls_decrypted_bytes", n)
        return True

    # -- getting back in sync --------------------------------------------------

    def _lose_tracking(self, ctx: SimNicRxContext) -> None:
        if ctx.candidate is not None:
            self.stats.inc("rx_tls_resync_req_skip")
        ctx.tracking = ctx.synced = False
        ctx.candidate = None
        ctx.async_end_due = False
        ctx.reset_record()

    def _find_start(
        self, ctx: SimNicRxContext, seq: int, data: memoryview, host: RxResyncHost
    ) -> int:
        """Out of sync: where in ``data`` tracking starts again (-1: nowhere).

        A hint the stack gave (CORE_NEXT_HINT, or going on after a TLS 1.3
        handshake record) is taken where the packet holds it; otherwise
        DRIVER_REQ(_ASYNC) contexts scan the packet for a candidate header."""
        n = len(data)
        if ctx.hint is not None:
            hseq, hsn = ctx.hint
            d = seq_diff(hseq, seq)
            if d < 0:
                ctx.hint = None  # already passed: wait for the next one
                self.stats.inc("rx_tls_resync_res_retry")
            elif d < n:
                ctx.hint = None
                ctx.tracking = ctx.synced = True
                ctx.paused = False
                ctx.record_sn = hsn
                ctx.reset_record()
                self.stats.inc("rx_tls_resync_res_ok")
                return d
            return -1
        if ctx.paused or ctx.sync_type == RxSyncType.CORE_NEXT_HINT:
            return -1
        raw = bytes(data)
        j = raw.find(b"\3\3", 1)
        while 0 < j <= n - TLS_HEADER_SIZE + 1:
            i, j = j - 1, raw.find(b"\3\3", j + 1)
            ctype, _version, length = HEADER.unpack_from(raw, i)
            if ctype not in ctx.types or not ctx.min_len <= length <= ctx.max_len:
                continue
            cand = (seq + i) & _SEQ_MASK
            ctx.tracking, ctx.synced = True, False
            ctx.candidate, ctx.since = cand, 0
            ctx.reset_record()
            self.stats.inc("rx_tls_resync_req_pkt")
            if ctx.sync_type == RxSyncType.DRIVER_REQ_ASYNC:
                self.stats.inc("rx_tls_resync_req_start")
                host.resync_async_start(seq, n)
                ctx.async_end_due = True
            else:
                host.resync_request(cand)
            return i
        return -1

    # -- the record machine ------------------------------------------------------

    def _walk(self, ctx: SimNicRxContext, data: memoryview, out: memoryview) -> tuple[bool, bool]:
        """Run ``data`` through the record machine, plaintext into ``out``.

        Returns (every byte belonged to a record being decrypted, every tag
        that ended here checked).  Stops early when tracking is lost."""
        pos, n = 0, len(data)
        handled = True
        while pos < n:
            live = ctx.synced and not ctx.paused
            if live and ctx.phase == _HEADER and not ctx.hdr:
                pos = self._whole_records(ctx, data, out, pos)
                if pos < 0:
                    return False, False
                if pos >= n:
                    break
            if ctx.phase == _HEADER:
                handled = handled and live
                take = min(ctx.hlen - len(ctx.hdr), n - pos)
                ctx.hdr += data[pos : pos + take]
                out[pos : pos + take] = data[pos : pos + take]
                pos += take
                if len(ctx.hdr) < ctx.hlen:
                    break
                ctype, version, length = HEADER.unpack_from(ctx.hdr)
                if (
                    ctype not in ctx.types
                    or version != RECORD_VERSION
                    or not ctx.min_len <= length <= ctx.max_len
                ):
                    self._lose_tracking(ctx)
                    return False, True
                ctx.body_left = length - (ctx.hlen - TLS_HEADER_SIZE) - ctx.tag_size
                ctx.tag_left = ctx.tag_size
                body_end = pos + ctx.body_left
                if live and body_end + ctx.tag_size <= n:
                    # The rest of the record is in this packet: open it in one
                    # pass (what the streaming path below does, in one call).
                    end = body_end + ctx.tag_size
                    ok = ctx.open_whole(data[pos:end], out[pos:body_end])
                    out[body_end:end] = data[body_end:end]
                    if ok and ctx.is13 and body_end > pos:
                        last = out[body_end - 1]
                        if not last:
                            nz = bytes(out[pos:body_end]).rstrip(b"\0")
                            last = nz[-1] if nz else 0
                        if last:
                            ctx.last_nz = last
                    pos = end
                    if not self._finish_record(ctx, ok, True):
                        return False, False
                    if not ctx.tracking:  # paused, or a candidate chain dropped
                        return handled and pos == n, True
                    continue
                ctx.stream = ctx.open_stream() if live else None
                ctx.phase = _BODY if ctx.body_left else _TAG
            elif ctx.phase == _BODY:
                take = min(ctx.body_left, n - pos)
                piece = data[pos : pos + take]
                if ctx.stream is None:
                    handled = False
                else:
                    plain = ctx.stream.update(piece)
                    out[pos : pos + take] = plain
                    if ctx.is13 and plain:
                        # The last byte is the inner type unless padding
                        # follows: only then look further back (no copy).
                        last = plain[-1]
                        if not last:
                            nz = plain.rstrip(b"\0")
                            last = nz[-1] if nz else 0
                        if last:
                            ctx.last_nz = last
                pos += take
                ctx.body_left -= take
                if ctx.body_left == 0:
                    ctx.phase = _TAG
            else:
                take = min(ctx.tag_left, n - pos)
                ctx.tagbuf += data[pos : pos + take]
                out[pos : pos + take] = data[pos : pos + take]
                handled = handled and ctx.stream is not None
                pos += take
                ctx.tag_left -= take
                if ctx.tag_left == 0:
                    if not self._end_record(ctx):
                        return False, False
                    if not ctx.tracking:  # paused, or a candidate chain dropped
                        return handled and pos == n, True
        return handled, True

    def _whole_records(
        self, ctx: SimNicRxContext, data: memoryview, out: memoryview, pos: int
    ) -> int:
        """In sync, at a record boundary: every record lying wholly in
        ``data[pos:]`` opened with one AEAD call each and no per-record state
        kept, its plaintext (header and tag as they came) into ``out``.

        Exactly what the record machine below does for such a record (the
        same nonce, AAD and checks), without building its header byte by
        byte or resetting the record state after each: the common case of
        a packet full of whole records.  Returns where the record machine
        goes on (a cut record, an implausible header, or a TLS 1.3 record
        whose last plaintext byte is not the data type - handshake or
        padding - which the machine opens again and judges), or -1 when a
        tag failed (counted and handled as the machine does)."""
        n = len(data)
        hlen, tag, prot = ctx.hlen, ctx.tag_size, ctx.prot
        types, lo, hi, is13 = ctx.types, ctx.min_len, ctx.max_len, ctx.is13
        unpack, decrypt = HEADER.unpack_from, ctx.aead().decrypt_into
        nonce_of, aad_of = prot.nonce, prot.aad
        sn = ctx.record_sn
        while n - pos >= hlen:
            ctype, version, length = unpack(data, pos)
            end = pos + TLS_HEADER_SIZE + length
            if end > n or ctype not in types or version != RECORD_VERSION or not lo <= length <= hi:
                break
            body, body_end = pos + hlen, end - tag
            nonce = nonce_of(sn, data[pos + TLS_HEADER_SIZE : body])
            try:
                decrypt(
                    nonce, data[body:end], aad_of(sn, ctype, body_end - body), out[body:body_end]
                )
            except InvalidTag:
                ctx.record_sn = sn
                self._finish_record(ctx, False, True)
                return -1
            if is13 and (body_end == body or out[body_end - 1] != _APPDATA):
                break  # the record machine opens it again and decides
            out[pos:body] = data[pos:body]
            out[body_end:end] = data[body_end:end]
            sn += 1
            pos = end
        ctx.record_sn = sn
        return pos

    def _end_record(self, ctx: SimNicRxContext) -> bool:
        """The record's tag is in: check it; False when it failed."""
        stream = ctx.stream
        ok = stream is None or stream.verify(bytes(ctx.tagbuf))
        return self._finish_record(ctx, ok, stream is not None)

    def _finish_record(self, ctx: SimNicRxContext, ok: bool, decrypted: bool) -> bool:
        """A record ended: its tag checked (``ok``) if the NIC was
        ``decrypted`` it; False when the tag failed."""
        if decrypted:
            if not ok:
                self.stats.inc("rx_tls_err")
                self._lose_tracking(ctx)
                return False
            if ctx.prot.is13 and ctx.last_nz != _APPDATA:
                # A handshake record (a KeyUpdate?): stop here, the host decides.
                ctx.paused = True
                ctx.tracking = ctx.synced = False
                ctx.reset_record()
                return True
        if ctx.synced:
            ctx.record_sn += 1
        else:
            ctx.since += 1
            if ctx.since > ctx.rescan_records:
                self._lose_tracking(ctx)
                return True
        ctx.reset_record()
        return True


__all__ = ["RESCAN_RECORDS", "SimNicRx", "SimNicRxContext"]
