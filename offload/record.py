"""Sans-I/O TLS record protection and parsing (TLS 1.2 and 1.3 AEAD), one record at a time.

This is the part of ``net/tls/tls_sw.c`` that touches bytes: sealing one
record, opening one record (or a run of them), and cutting a byte stream
into records.  No sockets here, so it can be tested against published
vectors and fuzzed.  The byte layout itself (header, nonce, additional
data, TLS 1.3 inner plaintext) lives in ``offload.framing``; records laid
out and sealed a batch at a time in pooled buffers in ``offload.batch``.

Why the shapes below:

* ``RecordSealer.seal_into`` writes the record header and encrypts the
  plaintext straight into the caller's record buffer (``encrypt_into``), so
  the AEAD output is the only copy of the payload a record costs.  For
  TLS 1.3 the inner content type must follow the plaintext in one
  contiguous buffer, so callers that can (``sendfile``) read the file into
  the record buffer and seal it in place.
* The sealer/opener keep the live state that ``getsockopt(TLS_TX)`` reads
  back: ``rec_seq`` and, for TLS 1.2 AES, the next explicit nonce.
* Errors are ``OSError`` with the errno Linux gives (EBADMSG for a bad tag,
  EMSGSIZE for an oversized record, EINVAL for a wrong version field).
  Where user space needs more than Linux tells (which alert to send), an
  ``offload.errors`` subclass carries it: ``NoContentType``,
  ``OuterTypeMismatch`` and ``ShortRecord`` (the record's header type).
"""

from __future__ import annotations

import errno
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from offload.errors import NoContentType, OuterTypeMismatch, ShortRecord, abort_error, os_error
from offload.framing import (
    AAD12,
    APPDATA,
    HEADER,
    RECORD_VERSION,
    SEQ_MASK,
    Buffer,
    ProtInfo,
    inner_type_at,
    tls13_aad,
    xor_iv,
)
from offload.uapi import TLS_HEADER_SIZE, TLS_MAX_PAYLOAD_SIZE, CipherType, CryptoInfo

__all__ = ["Buffer", "RecordOpener", "RecordParser", "RecordSealer", "make_aead"]


class _Aead(Protocol):
    def encrypt(self, nonce: Buffer, data: Buffer, associated_data: Buffer | None) -> bytes: ...

    def encrypt_into(
        self, nonce: Buffer, data: Buffer, associated_data: Buffer | None, buf: Buffer
    ) -> int: ...

    def decrypt(self, nonce: Buffer, data: Buffer, associated_data: Buffer | None) -> bytes: ...

    def decrypt_into(
        self, nonce: Buffer, data: Buffer, associated_data: Buffer | None, buf: Buffer
    ) -> int: ...


def make_aead(info: CryptoInfo) -> _Aead:
    """The AEAD primitive for a crypto_info's cipher (16-byte tags only)."""
    if info.cipher in (CipherType.AES_GCM_128, CipherType.AES_GCM_256):
        return AESGCM(info.key)
    if info.cipher == CipherType.AES_CCM_128:
        return AESCCM(info.key, tag_length=16)
    if info.cipher == CipherType.CHACHA20_POLY1305:
        return ChaCha20Poly1305(info.key)
    raise os_error(errno.EINVAL, f"unsupported cipher {info.cipher}")


class _Direction:
    """Key, nonce material and sequence number shared by sealer and opener.

    ``tag_size``, ``explicit_size``, ``salt``, ``static_iv`` and ``is13``
    repeat ``prot``'s fields as plain attributes: the batch and bulk loops
    read them once per batch, and so does code outside the layer.
    """

    exhausted = False
    """Set once the record numbered 2^64-1 went through: ``rec_seq`` wrapped."""

    def __init__(self, info: CryptoInfo) -> None:
        self.info = info
        self.version = info.version
        self.aead = make_aead(info)
        self.prot = prot = ProtInfo.from_info(info)
        self.tag_size = prot.tag_size
        self.explicit_size = prot.explicit_size
        self.salt = prot.salt
        self.static_iv = prot.static_iv
        self.is13 = prot.is13
        # TLS 1.2 AES: the next explicit nonce the sender will put on the wire.
        self.explicit = int.from_bytes(info.iv, "big") if self.explicit_size else 0
        self.seq = info.seq

    def live_info(self) -> CryptoInfo:
        """The crypto_info as getsockopt reports it: live rec_seq and iv.

        Linux copies ``cctx->iv + salt_size`` and ``cctx->rec_seq``; for
        TLS 1.2 AES the iv is the next explicit nonce, elsewhere it is the
        static IV installed by setsockopt.
        """
        info = self.info
        iv = info.iv
        if self.explicit_size:
            iv = self.explicit.to_bytes(self.explicit_size, "big")
        return type(info)(
            info.version,
            iv,
            info.key,
            info.salt,
            (self.seq & SEQ_MASK).to_bytes(info.spec.rec_seq_size, "big"),
        )

    def advance(self, n_rec: int = 1) -> None:
        """``n_rec`` records went through: move ``rec_seq`` on.

        Past 2^64-1 the number wraps to 0 and the direction is spent
        (``exhausted``), as ``tls_advance_record_sn`` leaves it when
        ``tls_bigint_increment`` wraps.
        """
        seq = self.seq + n_rec
        if seq > SEQ_MASK:
            self.exhausted = True
        self.seq = seq & SEQ_MASK


class RecordSealer(_Direction):
    """Seals records for one TX direction, advancing the sequence number.

    After the record with ``rec_seq`` 2^64-1 is sealed the sealer is spent:
    ``exhausted`` is set and the caller fails further sends with EBADMSG, as
    ``tls_advance_record_sn`` does when ``tls_bigint_increment`` wraps.
    """

    def sealed_size(self, plaintext_len: int) -> int:
        """Length of the record that carries ``plaintext_len`` bytes."""
        return self.prot.sealed_size(plaintext_len)

    def seal(self, content_type: int, plaintext: Buffer) -> bytearray:
        """One whole record for ``plaintext`` (at most 2^14 bytes)."""
        n = len(memoryview(plaintext))
        out = bytearray(self.sealed_size(n))
        if self.is13:
            memoryview(out)[TLS_HEADER_SIZE : TLS_HEADER_SIZE + n] = plaintext
            self.seal_in_place(out, content_type, n)
        else:
            self.seal_into(out, content_type, plaintext)
        return out

    def seal_into(self, out: bytearray, content_type: int, plaintext: Buffer) -> None:
        """Seal a TLS 1.2 record into ``out`` (sized by ``sealed_size``).

        The plaintext is read once by the AEAD and the ciphertext written
        once into ``out``: no other copy of the payload is made.
        """
        if self.is13:
            raise ValueError("TLS 1.3 records are sealed in place (seal_in_place)")
        mv = memoryview(plaintext)
        self._seal12(out, 0, content_type, len(mv), mv)

    def seal_in_place(self, out: bytearray, content_type: int, n: int, offset: int = 0) -> None:
        """Seal a record whose plaintext already sits in ``out`` after the header.

        Layout expected at ``offset``: header space, explicit nonce space
        (TLS 1.2 AES), ``n`` bytes of plaintext, for TLS 1.3 the inner
        content type, then room for the tag.  This is the zero-copy path for
        data read straight from a file.
        """
        if not self.is13:
            self._seal12(out, offset, content_type, n, None)
            return
        if n > TLS_MAX_PAYLOAD_SIZE:
            raise os_error(errno.EMSGSIZE, "record plaintext larger than 2^14")
        o = offset
        mv = memoryview(out)
        inner = n + 1
        out[o + TLS_HEADER_SIZE + n] = content_type
        self.prot.fill_prepend(out, o, content_type, inner)
        body = mv[o + TLS_HEADER_SIZE : o + TLS_HEADER_SIZE + inner + self.tag_size]
        self.aead.encrypt_into(
            xor_iv(self.static_iv, self.seq), body[:inner], mv[o : o + TLS_HEADER_SIZE], body
        )
        self.advance()

    def _seal12(
        self, out: bytearray, o: int, content_type: int, n: int, src: memoryview | None
    ) -> None:
        """One TLS 1.2 record at ``out[o:]``: from ``src``, or (None) from the
        plaintext already in place after the header and explicit nonce."""
        if n > TLS_MAX_PAYLOAD_SIZE:
            raise os_error(errno.EMSGSIZE, "record plaintext larger than 2^14")
        prot = self.prot
        seq = self.seq
        ex = self.explicit_size
        prot.fill_prepend(out, o, content_type, n, self.explicit)
        nonce = prot.nonce(seq, out[o + TLS_HEADER_SIZE : o + TLS_HEADER_SIZE + ex])
        if ex:
            self.explicit = (self.explicit + 1) & SEQ_MASK
        at = o + prot.prepend_size
        body = memoryview(out)[at : at + n + self.tag_size]
        self.aead.encrypt_into(
            nonce, body[:n] if src is None else src, prot.aad(seq, content_type, n), body
        )
        self.advance()

    def records_left(self) -> int:
        """How many more records this key may seal.

        The record numbered 2^64-1 is never sent: Linux wraps ``rec_seq``
        while sealing it and aborts the socket with EBADMSG before it reaches
        TCP (``tls_advance_record_sn``), so it counts as no space.
        """
        return 0 if self.exhausted else SEQ_MASK - self.seq

    def wrap(self) -> None:
        """What the kernel leaves behind after the wrap: rec_seq 0, spent."""
        self.seq = 0
        self.exhausted = True


class RecordOpener(_Direction):
    """Opens records for one RX direction, advancing the sequence number."""

    def max_record_len(self) -> int:
        """Largest acceptable record body (Linux: TLS_MAX_PAYLOAD_SIZE + overhead)."""
        return self.prot.max_body_len()

    def min_record_len(self) -> int:
        return self.prot.min_body_len()

    def open(self, record: Buffer) -> tuple[int, memoryview]:
        """Decrypt one whole record; returns (content type, plaintext).

        Fails with EBADMSG when the tag does not verify (no plaintext is
        ever returned for such a record) or, for TLS 1.3, when the inner
        plaintext is all zeros (no content type).  The sequence number
        advances only on success.
        """
        ctype, nonce, body, aad = self._unwrap(record)
        try:
            plain = memoryview(self.aead.decrypt(nonce, body, aad))
        except InvalidTag:
            raise self._bad_tag(ctype) from None
        return self._finish(ctype, plain)

    def inner_len(self, record: Buffer) -> int:
        """Bytes ``open_into`` writes for ``record`` (1.3: type and padding too)."""
        return len(record) - TLS_HEADER_SIZE - self.explicit_size - self.tag_size

    def open_into(self, record: Buffer, dst: memoryview) -> tuple[int, int]:
        """``open`` decrypting straight into ``dst``: (content type, length).

        ``dst`` needs ``inner_len(record)`` bytes.  This is the receive path
        without a plaintext copy: the AEAD writes into the reader's buffer,
        as Linux decrypts into the user's pages.  The AEAD writes before it
        verifies, so on a bad tag the bytes written are wiped again: the
        caller never sees unauthenticated plaintext.
        """
        ctype, nonce, body, aad = self._unwrap(record)
        out = dst[: len(body) - self.tag_size]
        try:
            self.aead.decrypt_into(nonce, body, aad, out)
        except InvalidTag:
            out[:] = bytes(len(out))
            raise self._bad_tag(ctype) from None
        ctype, plain = self._finish(ctype, out)
        return ctype, len(plain)

    def open_data_into(self, parser: RecordParser, dst: memoryview) -> tuple[int, int, int]:
        """Decrypt the run of whole data records buffered in ``parser`` into ``dst``.

        Returns (records, bytes written, padded TLS 1.3 records).  This is
        the bulk receive loop with everything hoisted out of it: one header
        unpack, one nonce and one ``decrypt_into`` per record, plaintexts
        packed back to back.  It stops, consuming nothing more, at the first
        record that is incomplete, not application data, too big for what
        is left of ``dst``, malformed, the last before the sequence number
        wraps or fails to verify: the one-record path (``open``/
        ``open_into`` and the parser's checks) then deals with it and
        raises the right errno, so this loop never reports an error itself.

        The framing is ``offload.framing``'s, inlined: a TLS 1.3 record
        reaching the AEAD here has type 23 and version 0x0303, so its header
        *is* the additional data ``tls13_aad`` would build.
        """
        mv = parser.pending()
        unpack = HEADER.unpack_from
        dec = self.aead.decrypt_into
        pack_aad = AAD12.pack
        tag, ex, is13 = self.tag_size, self.explicit_size, self.is13
        max_len, min_len = parser.max_len, parser.min_len
        iv, salt = self.static_iv, self.salt
        seq = self.seq
        room = len(dst)
        end = len(mv)
        pos = off = nrec = padded = 0
        while end - pos >= TLS_HEADER_SIZE:
            ctype, version, length = unpack(mv, pos)
            body_at = pos + TLS_HEADER_SIZE
            nxt = body_at + length
            if (
                ctype != APPDATA
                or version != RECORD_VERSION
                or length > max_len
                or length < min_len
                or nxt > end
                or seq == SEQ_MASK
            ):
                break
            inner = length - ex - tag
            if inner > room - off:
                break
            out = dst[off : off + inner]
            if is13:
                nonce = (iv ^ seq).to_bytes(12, "big")
                aad: bytes | memoryview = mv[pos:body_at]
            elif ex:
                nonce = salt + mv[body_at : body_at + ex]
                aad = pack_aad(seq, APPDATA, RECORD_VERSION, inner)
            else:
                nonce = (iv ^ seq).to_bytes(12, "big")
                aad = pack_aad(seq, APPDATA, RECORD_VERSION, inner)
            try:
                dec(nonce, mv[body_at + ex : nxt], aad, out)
            except InvalidTag:
                out[:] = bytes(inner)
                break
            n = inner
            if is13:
                n -= 1
                if n < 0 or out[n] != APPDATA:
                    n = inner_type_at(out)  # padded (rare): find the real type
                    if n < 0 or out[n] != APPDATA:
                        break  # a control record (or none): the slow path's
                    padded += 1
            off += n
            pos = nxt
            seq += 1
            nrec += 1
        if nrec:
            parser.consume(pos)
            self.seq = seq
            if ex:
                self.explicit = (self.explicit + nrec) & SEQ_MASK
        return nrec, off, padded

    def accept_decrypted(self, record: memoryview) -> tuple[int, memoryview]:
        """A record a NIC already decrypted and authenticated (RX device
        offload, ``tls_device_decrypted``): (content type, plaintext), a
        view into ``record``, with the state advanced as ``open`` does.

        The header, explicit nonce and tag are as on the wire; the body is
        plaintext.  TLS 1.3 finds its inner type (EBADMSG when there is none).
        """
        ctype, _version, length = HEADER.unpack_from(record)
        body = record[
            TLS_HEADER_SIZE + self.explicit_size : TLS_HEADER_SIZE + length - self.tag_size
        ]
        return self._finish(ctype, body)

    def take_decrypted_into(
        self, parser: RecordParser, dst: memoryview, covered: int
    ) -> tuple[int, int]:
        """Copy the run of whole data records a NIC decrypted into ``dst``.

        The bulk form of ``accept_decrypted`` (RX device offload): the first
        ``covered`` bytes of ``parser.pending()`` came in packets marked
        decrypted, so the records lying wholly inside them hold plaintext
        whose tags the NIC checked.  Their plaintexts are copied back to
        back into ``dst`` - the one copy from the receive buffer to the
        reader's - and (records, bytes written) returned.  As
        ``open_data_into`` it stops, consuming nothing more, at the first
        record that is not application data, malformed, incomplete, ends
        past ``covered``, does not fit what is left of ``dst``, is the last
        before the sequence number wraps, or (TLS 1.3) carries padding or
        no application-data inner type: ``accept_decrypted`` and the
        parser's checks then deal with it one record at a time.
        """
        mv = parser.pending()[:covered]
        unpack = HEADER.unpack_from
        tag, ex, is13 = self.tag_size, self.explicit_size, self.is13
        max_len, min_len = parser.max_len, parser.min_len
        seq = self.seq
        room = len(dst)
        end = len(mv)
        pos = off = nrec = 0
        uniform = True  # try a run of equal records (once it fails, record by record)
        while end - pos >= TLS_HEADER_SIZE:
            if uniform:
                k, size, n = self._uniform_run(
                    mv, pos, room - off, SEQ_MASK - seq, min_len, max_len
                )
                uniform = k > 1
                if uniform:
                    at = pos + TLS_HEADER_SIZE + ex
                    for a in range(at, at + k * size, size):
                        dst[off : off + n] = mv[a : a + n]
                        off += n
                    pos += k * size
                    seq += k
                    nrec += k
                    continue
            ctype, version, length = unpack(mv, pos)
            body_at = pos + TLS_HEADER_SIZE + ex
            nxt = pos + TLS_HEADER_SIZE + length
            if (
                ctype != APPDATA
                or version != RECORD_VERSION
                or length > max_len
                or length < min_len
                or nxt > end
                or seq == SEQ_MASK
            ):
                break
            n = length - ex - tag
            if is13:
                n -= 1  # the inner type; padding (a zero there) is the slow path's
                if n < 0 or mv[body_at + n] != APPDATA:
                    break
            if n > room - off:
                break
            dst[off : off + n] = mv[body_at : body_at + n]
            off += n
            pos = nxt
            seq += 1
            nrec += 1
        if nrec:
            parser.consume(pos)
            self.seq = seq
            if ex:
                self.explicit = (self.explicit + nrec) & SEQ_MASK
        return nrec, off

    def _uniform_run(
        self, mv: memoryview, pos: int, room: int, seq_left: int, min_len: int, max_len: int
    ) -> tuple[int, int, int]:
        """How many records from ``mv[pos:]`` are copies of the first one's
        shape and all pass ``take_decrypted_into``'s per-record checks - the
        run a bulk sender makes of equal records: (records, record size,
        content bytes each), or (0, 0, 0).

        The checks are the loop's (application data, version, length within
        the parser's bounds, whole inside ``mv``, fits ``room``, no record
        numbered 2^64-1, TLS 1.3 inner type present and not padded), made
        for every record of the run at once: each header byte and each
        TLS 1.3 inner-type byte is gathered across the run with one strided
        slice and compared in C.  So the copy loop that follows is one slice
        assignment per record and nothing else."""
        end = len(mv)
        if end - pos < TLS_HEADER_SIZE:
            return 0, 0, 0
        ctype, version, length = HEADER.unpack_from(mv, pos)
        size = TLS_HEADER_SIZE + length
        n = length - self.explicit_size - self.tag_size - self.is13
        if (
            ctype != APPDATA
            or version != RECORD_VERSION
            or not min_len <= length <= max_len
            or n <= 0
        ):
            return 0, 0, 0
        k = min((end - pos) // size, room // n, seq_left)
        if k < 2:
            return 0, 0, 0
        run = mv[pos : pos + k * size]
        head = bytes(run[:TLS_HEADER_SIZE])
        for j in range(TLS_HEADER_SIZE):
            if run[j::size].tobytes() != head[j : j + 1] * k:
                return 0, 0, 0
        if self.is13:
            inner = size - self.tag_size - 1
            if run[inner::size].tobytes() != bytes((APPDATA,)) * k:
                return 0, 0, 0
        return k, size, n

    def _unwrap(self, record: Buffer) -> tuple[int, bytes, memoryview, bytes | memoryview]:
        """Header checks, then (outer type, nonce, body past any explicit nonce, AAD)."""
        mv = memoryview(record)
        if len(mv) < TLS_HEADER_SIZE:
            raise os_error(errno.EBADMSG, "record shorter than its header")
        ctype, version, length = HEADER.unpack_from(mv)
        body = mv[TLS_HEADER_SIZE : TLS_HEADER_SIZE + length]
        if len(body) != length or length < self.min_record_len():
            raise os_error(errno.EBADMSG, "record shorter than its cipher overhead")
        seq = self.seq
        # offload.framing's nonce and tls_make_aad, inlined: this is the
        # per-record receive path of every reader with a small buffer.
        if self.is13:
            # Authenticated as application_data, version 0x0303, whatever the
            # header says; a well-formed header is that AAD byte for byte.
            if ctype == APPDATA and version == RECORD_VERSION:
                aad: bytes | memoryview = mv[:TLS_HEADER_SIZE]
            else:
                aad = tls13_aad(length)
            return ctype, (self.static_iv ^ seq).to_bytes(12, "big"), body, aad
        ex = self.explicit_size
        nonce = self.salt + body[:ex] if ex else (self.static_iv ^ seq).to_bytes(12, "big")
        aad = AAD12.pack(seq, ctype, RECORD_VERSION, length - ex - self.tag_size)
        return ctype, nonce, body[ex:], aad

    def _bad_tag(self, ctype: int) -> OSError:
        """EBADMSG for a record whose tag failed; a TLS 1.3 record whose
        header type was not application_data says so (``OuterTypeMismatch``)."""
        if self.is13 and ctype != APPDATA:
            return OuterTypeMismatch(
                errno.EBADMSG, f"Bad message (TLS 1.3 record of outer type {ctype})", ctype
            )
        return os_error(errno.EBADMSG, "bad record MAC")

    def _finish(self, ctype: int, plain: memoryview) -> tuple[int, memoryview]:
        """Authenticated plaintext: find the TLS 1.3 inner type, advance the state."""
        if self.is13:
            end = len(plain) - 1
            if end < 0 or plain[end] == 0:
                end = inner_type_at(plain)  # padded: the type is further back
            if end < 0:
                raise NoContentType(
                    errno.EBADMSG, "Bad message (TLS 1.3 record with no content type)"
                )
            ctype = plain[end]
            plain = plain[:end]
        self.advance()
        if self.explicit_size:  # getsockopt(TLS_RX) on Linux shows the iv advanced per record
            self.explicit = (self.explicit + 1) & SEQ_MASK
        return ctype, plain


class RecordParser:
    """Cuts a TLS byte stream into whole records; accepts any split of it.

    ``feed`` appends bytes (or ``write_space`` + ``commit`` let the socket
    read straight into the parser's buffer: no copy between the socket and
    the AEAD); ``next_record`` returns the next complete record (header
    included) as a view into that buffer, valid until the next
    ``feed``/``write_space``.  Header checks follow ``tls_rx_msg_size``:
    the version field must be 0x0303 (EINVAL), the length must not exceed
    2^14 plus the cipher overhead (EMSGSIZE) and must cover the overhead
    (EBADMSG).  The checks run as soon as the 5 header bytes are in, so a
    hostile length never makes the parser buffer more than one record.

    A bulk reader that checks headers itself (``RecordOpener.open_data_into``)
    takes runs of whole records with ``pending`` and ``consume`` instead.

    The buffer is never resized in place (views of it may be alive): it is
    compacted by moving the unparsed tail to the front, or replaced by a
    larger one, so storage stays at one read plus one record.
    """

    def __init__(self, max_len: int = TLS_MAX_PAYLOAD_SIZE + 256, min_len: int = 0) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._end = 0
        self.max_len = max_len
        self.min_len = min_len

    def write_space(self, want: int) -> memoryview:
        """At least ``want`` writable bytes after the buffered ones."""
        live = self._end - self._pos
        if live == 0:
            self._pos = self._end = 0
        if len(self._buf) - self._end < want:
            if len(self._buf) - live >= want:
                # Compact: same-size slice assignment, allowed with views alive.
                self._buf[:live] = self._buf[self._pos : self._end]
            else:
                grown = bytearray(max(live + want, 2 * len(self._buf)))
                grown[:live] = self._buf[self._pos : self._end]
                self._buf = grown
            self._pos, self._end = 0, live
        return memoryview(self._buf)[self._end :]

    def commit(self, n: int) -> None:
        """``n`` bytes were written into the last ``write_space`` view."""
        self._end += n

    def feed(self, data: Buffer) -> None:
        n = len(data)
        self.write_space(n)[:n] = data
        self._end += n

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a record."""
        return self._end - self._pos

    def pending(self) -> memoryview:
        """The buffered bytes not yet taken, from the next record's header on.

        They may end inside a record, and no header in them has been
        checked: the caller walks the records itself and reports how far
        it got with ``consume``.  Valid until the next ``feed``/``write_space``.
        """
        return memoryview(self._buf)[self._pos : self._end]

    def consume(self, n: int) -> None:
        """The first ``n`` bytes of ``pending()`` were whole records, taken."""
        if n < 0 or n > self._end - self._pos:
            raise ValueError(f"cannot consume {n} of {self._end - self._pos} buffered bytes")
        self._pos += n

    def peek_header(self) -> tuple[int, int, int] | None:
        """(type, version, length) of the next record once its header is in."""
        if self._end - self._pos < TLS_HEADER_SIZE:
            return None
        ctype, version, length = HEADER.unpack_from(self._buf, self._pos)
        if version != RECORD_VERSION:
            raise abort_error(errno.EINVAL, f"record version 0x{version:04x} is not 0x0303")
        if length > self.max_len:
            raise abort_error(errno.EMSGSIZE, f"record length {length} exceeds {self.max_len}")
        if length < self.min_len:
            raise ShortRecord(
                errno.EBADMSG,
                f"Bad message (record length {length} below cipher overhead)",
                ctype,
            )
        return ctype, version, length

    def next_record(self) -> memoryview | None:
        head = self.peek_header()
        if head is None:
            return None
        start = self._pos
        end = start + TLS_HEADER_SIZE + head[2]
        if end > self._end:
            return None
        self._pos = end
        return memoryview(self._buf)[start:end]
