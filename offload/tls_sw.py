"""Software TX and RX contexts (TLS_CONF_SW): the mirror of net/tls/tls_sw.c.

These hold the per-direction state behind a kTLS socket and turn plaintext
into records (TX) or records into plaintext (RX).  They do no socket I/O:
the socket layer moves bytes and decides when to block.  Keeping them apart
is what lets the device path (a NIC driver doing the crypto) reuse the same
socket layer later.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from offload.batch import RecordBuf, TxBatches
from offload.errors import abort_error, os_error
from offload.record import Buffer, RecordOpener, RecordParser, RecordSealer
from offload.uapi import TLS_MAX_PAYLOAD_SIZE, ContentType, CryptoInfo

BATCH_RECORDS = 64
"""Records sealed into one buffer and written with one socket call.

64 full records are 1 MiB: on loopback the sender's system time per byte
fell by about a quarter against 16 (fewer ``preadv``/``sendmsg`` calls and
wake-ups of the reader), at a cost of 1 MiB per pooled buffer."""
_POOL_MAX = 8

SCRATCH_MAX = 128 * 1024
"""Largest run of TLS 1.3 records decrypted into scratch space per call."""

TLS_HANDSHAKE_KEYUPDATE = 24
_KEYUPDATE = bytes([TLS_HANDSHAKE_KEYUPDATE])
_DATA = int(ContentType.APPLICATION_DATA)


class SwTx:
    """Frames plaintext into sealed records for one connection's TX side.

    ``MSG_MORE`` is modelled as in Linux: data goes into an *open record*
    that is pushed when it is full, when a send comes without MSG_MORE, or
    before a control record, and is sealed under the key in force when it
    is pushed.  Sealed bytes are returned to the caller, which owns the
    write queue.
    """

    batch_records = BATCH_RECORDS
    """Records per framing buffer (one socket write / one segmenting pass)."""
    pool_max = _POOL_MAX
    """Full batch buffers kept for reuse."""

    def __init__(self, info: CryptoInfo, max_payload: int = TLS_MAX_PAYLOAD_SIZE) -> None:
        self.max_payload = max_payload
        self.open_record = bytearray()
        self.records = 0  # records sealed since install (for diagnostics)
        self._install(info)

    def _install(self, info: CryptoInfo) -> None:
        self.sealer = RecordSealer(info)
        self.batches = TxBatches(self.sealer, self.max_payload, self.batch_records, self.pool_max)

    def set_max_payload(self, max_payload: int) -> None:
        """Records framed from now on carry at most ``max_payload`` bytes
        (``TLS_TX_MAX_PAYLOAD_LEN``; the caller has checked that no record
        is open).  Pooled buffers of the old size are dropped with the old
        batcher."""
        self.max_payload = max_payload
        self.batches = TxBatches(self.sealer, max_payload, self.batch_records, self.pool_max)

    def recycle(self, buf: RecordBuf) -> None:
        """Take back a fully written batch buffer for reuse (bounded pool)."""
        self.batches.give_back(buf)

    @property
    def info(self) -> CryptoInfo:
        return self.sealer.info

    def live_info(self) -> CryptoInfo:
        return self.sealer.live_info()

    def rekey(self, info: CryptoInfo) -> None:
        """TLS 1.3 key update: later records use the new key and rec_seq.

        Records already sealed keep the old key; the open record (MSG_MORE)
        is not sealed yet, so it goes out under the new one, as Linux 6.14+
        seals it when it closes."""
        self._install(info)

    def _check_space(self, nrecords: int) -> None:
        if self.sealer.records_left() < nrecords:
            self.sealer.wrap()
            raise os_error(errno.EBADMSG, "record sequence number space exhausted")

    def frame(self, content_type: int, data: Buffer, more: bool) -> Iterator[bytearray]:
        """Seal ``data`` as records of type ``content_type``, batch by batch.

        Yields buffers of up to ``BATCH_RECORDS`` records so the caller can
        write each before the next is sealed (memory stays bounded and the
        buffers can be recycled).  With ``more`` the tail stays in the open
        record (data records only; the socket layer rejects MSG_MORE on
        control records with EINVAL).  Sequence space is checked up front:
        either every record fits or none is sealed (EBADMSG).
        """
        mv = memoryview(data)
        pending = len(self.open_record) + len(mv)
        self._check_space(max(1, -(-pending // self.max_payload)))
        return self._frame(content_type, mv, more)

    def _frame(self, content_type: int, mv: memoryview, more: bool) -> Iterator[bytearray]:
        if content_type != _DATA:
            yield from self.push()
            if len(mv):  # Linux sends no empty control record (returns 0)
                yield from self._emit(content_type, mv)
            return
        if self.open_record or more:
            self.open_record += mv
            full = len(self.open_record) // self.max_payload * self.max_payload
            if full:
                chunk = self.open_record[:full]
                del self.open_record[:full]
                yield from self._emit(_DATA, memoryview(chunk))
            if not more:
                yield from self.push()
            return
        yield from self._emit(_DATA, mv)

    def push(self) -> Iterator[bytearray]:
        """Close the open record, if any (a send without MSG_MORE)."""
        if not self.open_record:
            return
        chunk, self.open_record = self.open_record, bytearray()
        yield from self._emit(_DATA, memoryview(chunk))

    def _emit(self, content_type: int, mv: memoryview) -> Iterator[bytearray]:
        n = len(mv)
        if n == 0 and content_type == _DATA:
            return
        step = self.max_payload * self.batch_records
        for off in range(0, max(n, 1), step):
            chunk = mv[off : off + step]
            nrec = max(1, -(-len(chunk) // self.max_payload))
            self._check_space(nrec)
            yield self.batches.seal_from(content_type, chunk)
            self.records += nrec

    def lay_out(self, total: int) -> tuple[RecordBuf, list[memoryview]]:
        """A record buffer and its plaintext slots for ``total`` bytes (sendfile).

        The sequence space is checked first (EBADMSG when it is used up, as
        for any send).  The caller fills the slots, then ``push_slots``.
        """
        nrec = max(1, -(-total // self.max_payload))
        self._check_space(nrec)
        return self.batches.take(total)

    def push_slots(self, buf: RecordBuf, slots: list[memoryview]) -> None:
        """The slots of a ``lay_out`` buffer are filled: make them data
        records ready for the socket - sealed in place here, framed for the
        NIC in device TX (both are ``tls_push_record`` in Linux)."""
        if not isinstance(buf, bytearray):  # this class's lay_out gives no other
            raise TypeError("software TX seals its own record buffers only")
        self.batches.seal(buf, _DATA, slots)
        self.records += len(slots)


@dataclass
class RxRecord:
    """One decrypted record waiting to be read, possibly partially consumed."""

    content_type: int
    data: memoryview
    offset: int = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset


class SwRx:
    """Decrypts records for one connection's RX side.

    Feed it socket bytes; ``current()`` gives the record to read from next,
    decrypting lazily so that a TLS 1.3 KeyUpdate stops decryption exactly
    at the record boundary: records after it are kept as ciphertext until
    the next key is installed (Linux: ``key_update_pending``).  Decrypted
    records wait on ``ready`` until read (MSG_PEEK reads without consuming).
    """

    def __init__(self, info: CryptoInfo) -> None:
        self._install(info)
        self.parser = RecordParser(self.opener.max_record_len(), self.opener.min_record_len())
        self.ready: deque[RxRecord] = deque()
        self.key_update_pending = False
        self.key_updates_received = 0
        self.no_pad = False
        self.padding_seen = 0
        self._scratch = bytearray()

    def _install(self, info: CryptoInfo) -> None:
        self.opener = RecordOpener(info)

    @property
    def info(self) -> CryptoInfo:
        return self.opener.info

    def live_info(self) -> CryptoInfo:
        return self.opener.live_info()

    def rekey(self, info: CryptoInfo) -> None:
        self._install(info)
        self.key_update_pending = False

    def feed(self, data: Buffer) -> None:
        self.parser.feed(data)

    def decrypt_next(self, dst: memoryview | None = None) -> RxRecord | int | None:
        """Decrypt one more buffered record onto the ready queue, if whole.

        With ``dst`` (a reader's buffer, nothing queued ahead of it) the
        data records that fit land in ``dst`` and the bytes written are
        returned instead.  Nothing but their plaintext is written there,
        as Linux writes nothing past what recvmsg returns: a TLS 1.2 record
        says its type in the header, so a run of data records is decrypted
        straight into ``dst`` (zero copy); a TLS 1.3 record hides it inside,
        so the run is decrypted into scratch space first and only its data
        is copied (as Linux does unless TLS_RX_EXPECT_NO_PAD: it then
        decrypts into the reader's buffer and, for a control record, again
        into its own, leaving that record's plaintext behind).

        Raises the parser's/opener's OSError (EBADMSG, EMSGSIZE, EINVAL) for
        a bad record; the caller makes it sticky as Linux does.  Returns
        None when no whole record is buffered or a KeyUpdate was read.
        """
        if self.key_update_pending:
            return None
        if self.opener.exhausted:
            # The record numbered 2^64-1 was delivered; rec_seq wrapped, and
            # Linux aborts the socket (reported once, at the next read).
            raise abort_error(errno.EBADMSG, "record sequence number wrapped")
        opener = self.opener
        if dst is not None:
            out = self._scratch_for(len(dst)) if opener.is13 else dst
            nrec, written, padded = opener.open_data_into(self.parser, out)
            if nrec:
                self.padding_seen += padded
                if out is not dst:
                    dst[:written] = out[:written]
                return written
        raw = self.parser.next_record()
        if raw is None:
            return None
        inner = opener.inner_len(raw)
        direct = dst is not None and not opener.is13 and raw[0] == _DATA and inner <= len(dst)
        if direct:
            assert dst is not None
            ctype, n = opener.open_into(raw, dst)
            plain = dst[:n]
        else:
            ctype, plain = opener.open(raw)
        if opener.is13:
            self._note13(ctype, plain, inner)
        if direct:
            if ctype == _DATA:
                return len(plain)
            plain = memoryview(bytes(plain))
        rec = RxRecord(ctype, plain)
        self.ready.append(rec)
        return rec

    def _note13(self, ctype: int, plain: memoryview, inner: int) -> None:
        """A TLS 1.3 record was opened: count its padding; a KeyUpdate
        stops decryption at this record boundary (``key_update_pending``)."""
        if inner - 1 != len(plain):
            self.padding_seen += 1
        if ctype == ContentType.HANDSHAKE and plain[:1] == _KEYUPDATE:
            self.key_update_pending = True
            self.key_updates_received += 1

    def _scratch_for(self, room: int) -> memoryview:
        """Scratch space for a TLS 1.3 run whose plaintext fits ``room``
        (one byte more: the last record's inner type)."""
        want = min(room, SCRATCH_MAX) + 1
        if len(self._scratch) < want:
            self._scratch = bytearray(want)
        return memoryview(self._scratch)[:want]

    def consume(self, rec: RxRecord, n: int) -> None:
        """Mark ``n`` bytes of the front record read; drop it when empty."""
        rec.offset += n
        if rec.remaining == 0 and self.ready and self.ready[0] is rec:
            self.ready.popleft()

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered: undelivered plaintext plus unparsed ciphertext."""
        return sum(r.remaining for r in self.ready) + self.parser.buffered
