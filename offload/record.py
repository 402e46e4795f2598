"""Sans-I/O TLS record protection and parsing (TLS 1.2 and 1.3 AEAD).

This is the part of ``net/tls/tls_sw.c`` that touches bytes: building the
nonce and additional data, sealing one record, opening one record, and
cutting a byte stream into records.  No sockets here, so it can be tested
against published vectors and fuzzed.

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
import struct
from typing import Protocol, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from offload.errors import NoContentType, OuterTypeMismatch, ShortRecord, abort_error, os_error
from offload.uapi import (
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_HEADER_SIZE,
    TLS_MAX_PAYLOAD_SIZE,
    CipherType,
    ContentType,
    CryptoInfo,
)

Buffer: TypeAlias = bytes | bytearray | memoryview

_HEADER = struct.Struct(">BHH")
_AAD12 = struct.Struct(">QBHH")
_HEADER_EX = struct.Struct(">BHHQ")  # TLS 1.2 AES header + explicit nonce
_SEQ = struct.Struct(">Q")
_SEQ_MASK = (1 << 64) - 1
# A pooled buffer, its (total, max_payload) and its records' plaintext slots.
_Layout: TypeAlias = tuple[bytearray, tuple[int, int], tuple[memoryview, ...]]
# Per TLS 1.3 record: inner type offset, inner plaintext, header (AAD), body.
_Views13: TypeAlias = tuple[tuple[int, memoryview, memoryview, memoryview], ...]
_APPDATA = int(ContentType.APPLICATION_DATA)
_APPDATA_TYPE = bytes((_APPDATA,))


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


def record_overhead(info: CryptoInfo) -> int:
    """Bytes a record adds to its plaintext: header, explicit nonce, tag, 1.3 type."""
    spec = info.spec
    extra = 1 if info.version == TLS_1_3_VERSION else 0
    return TLS_HEADER_SIZE + spec.explicit_nonce_size(info.version) + spec.tag_size + extra


class _Direction:
    """Key, nonce material and sequence number shared by sealer and opener."""

    def __init__(self, info: CryptoInfo) -> None:
        self.info = info
        self.version = info.version
        self.aead = make_aead(info)
        spec = info.spec
        self.tag_size = spec.tag_size
        self.explicit_size = spec.explicit_nonce_size(info.version)
        self.salt = info.salt
        # TLS 1.3 and ChaCha20: the 12-byte static IV XORed with the sequence.
        self.static_iv = int.from_bytes(info.salt + info.iv, "big")
        # TLS 1.2 AES: the next explicit nonce the sender will put on the wire.
        self.explicit = int.from_bytes(info.iv, "big") if self.explicit_size else 0
        self.seq = info.seq
        self.is13 = info.version == TLS_1_3_VERSION

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
            (self.seq & _SEQ_MASK).to_bytes(info.spec.rec_seq_size, "big"),
        )

    def nonce(self, seq: int) -> bytes:
        return (self.static_iv ^ seq).to_bytes(12, "big")


class SequenceExhausted(OSError):
    """Raised after the record with sequence number 2^64-1 (Linux: EBADMSG)."""


class RecordSealer(_Direction):
    """Seals records for one TX direction, advancing the sequence number.

    After the record with ``rec_seq`` 2^64-1 is sealed the sealer is spent:
    ``exhausted`` is set and the caller fails further sends with EBADMSG, as
    ``tls_advance_record_sn`` does when ``tls_bigint_increment`` wraps.
    """

    exhausted = False
    _layout_cache: _Layout | None = None
    _framed: tuple[bytearray, int, tuple[int, int]] | None = None  # headers written in place
    _views: tuple[_Layout, _Views13] | None = None  # for that layout (see _views13)

    def sealed_size(self, plaintext_len: int) -> int:
        """Length of the record that carries ``plaintext_len`` bytes."""
        return TLS_HEADER_SIZE + self.explicit_size + plaintext_len + self.tag_size + int(self.is13)

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
        seq = self.seq
        o = offset
        mv = memoryview(out)
        inner = n + 1
        out[o + 5 + n] = content_type
        _HEADER.pack_into(out, o, _APPDATA, TLS_1_2_VERSION, inner + self.tag_size)
        body = mv[o + 5 : o + 5 + inner + self.tag_size]
        self.aead.encrypt_into(self.nonce(seq), body[:inner], mv[o : o + 5], body)
        self._advance(seq)

    def _seal12(
        self, out: bytearray, o: int, content_type: int, n: int, src: memoryview | None
    ) -> None:
        """One TLS 1.2 record at ``out[o:]``: from ``src``, or (None) from the
        plaintext already in place after the header and explicit nonce."""
        if n > TLS_MAX_PAYLOAD_SIZE:
            raise os_error(errno.EMSGSIZE, "record plaintext larger than 2^14")
        seq = self.seq
        ex = self.explicit_size
        tag = self.tag_size
        _HEADER.pack_into(out, o, content_type, TLS_1_2_VERSION, ex + n + tag)
        if ex:
            explicit = self.explicit.to_bytes(8, "big")
            out[o + 5 : o + 13] = explicit
            nonce = self.salt + explicit
            self.explicit = (self.explicit + 1) & _SEQ_MASK
        else:
            nonce = self.nonce(seq)
        aad = _AAD12.pack(seq, content_type, TLS_1_2_VERSION, n)
        body = memoryview(out)[o + 5 + ex : o + 5 + ex + n + tag]
        self.aead.encrypt_into(nonce, body[:n] if src is None else src, aad, body)
        self._advance(seq)

    def seal_many(
        self, content_type: int, src: Buffer, max_payload: int, buf: bytearray | None = None
    ) -> bytearray:
        """Seal ``src`` as consecutive records of at most ``max_payload`` bytes.

        The records land back to back in one buffer, ready for one socket
        write.  TLS 1.2 encrypts straight from ``src``; TLS 1.3 needs the
        inner type after each chunk, so it places the chunk first (the copy
        Linux makes from user memory) and seals in place.
        """
        mv = memoryview(src)
        total = len(mv)
        out, slots = self.layout(total, max_payload, buf)
        if self.is13:
            p = 0
            for slot in slots:
                n = len(slot) - 1
                slot[:n] = mv[p : p + n]
                p += n
            self.seal_slots(out, content_type, slots)
            return out
        if self.explicit + len(slots) > _SEQ_MASK:
            # Rare: the explicit nonce wraps inside the batch; go record by record.
            p = o = 0
            for slot in slots:
                n = len(slot)
                rec = self.seal(content_type, mv[p : p + n])
                out[o : o + len(rec)] = rec
                p += n
                o += len(rec)
            return out
        self._seal12_batch(out, content_type, mv, [len(s) for s in slots], from_src=True)
        return out

    def records_left(self) -> int:
        """How many more records this key may seal.

        The record numbered 2^64-1 is never sent: Linux wraps ``rec_seq``
        while sealing it and aborts the socket with EBADMSG before it reaches
        TCP (``tls_advance_record_sn``), so it counts as no space.
        """
        return 0 if self.exhausted else _SEQ_MASK - self.seq

    def wrap(self) -> None:
        """What the kernel leaves behind after the wrap: rec_seq 0, spent."""
        self.seq = 0
        self.exhausted = True

    def layout(
        self, total: int, max_payload: int, buf: bytearray | None = None
    ) -> tuple[bytearray, list[memoryview]]:
        """A buffer for ``total`` plaintext bytes cut into records, and the
        plaintext slot of each record (for TLS 1.3 the slot includes the
        trailing inner-type byte).  A reader can fill the slots directly
        (``os.preadv``) so file data is never copied before it is sealed.
        ``buf`` is reused when it has exactly the needed size: allocating
        (and zeroing) a fresh buffer per batch costs as much as a copy.
        """
        if max_payload < 1 or max_payload > TLS_MAX_PAYLOAD_SIZE:
            raise os_error(errno.EINVAL, "record payload size must be 1..16384")
        cached = self._layout_cache
        if cached is not None and buf is cached[0] and (total, max_payload) == cached[1]:
            # The same pooled buffer laid out the same way again (every full
            # batch of a bulk send): its slot views are still right.
            return buf, list(cached[2])
        sizes = [max_payload] * (total // max_payload)
        if total % max_payload or total == 0:
            sizes.append(total % max_payload)
        over = TLS_HEADER_SIZE + self.explicit_size
        inner_extra = int(self.is13)
        size = sum(sizes) + len(sizes) * (over + self.tag_size + inner_extra)
        out = buf if buf is not None and len(buf) == size else bytearray(size)
        mv = memoryview(out)
        slots = []
        o = 0
        for n in sizes:
            slots.append(mv[o + over : o + over + n + inner_extra])
            o += over + n + inner_extra + self.tag_size
        if out is buf:
            self._layout_cache = (out, (total, max_payload), tuple(slots))
        return out, slots

    def seal_slots(self, out: bytearray, content_type: int, slots: list[memoryview]) -> None:
        """Seal, in place, records laid out by ``layout`` whose slots are filled.

        Callers keep a batch within the sequence space left (``records_left``):
        the record numbered 2^64-1 is the last one a key may seal.
        """
        if (self.seq if self.is13 else self.explicit) + len(slots) > _SEQ_MASK:
            # Rare: the sequence number (TLS 1.3) or the explicit nonce
            # (TLS 1.2) reaches 2^64-1 inside the batch; go record by record.
            o = 0
            for slot in slots:
                n = len(slot) - int(self.is13)
                self.seal_in_place(out, content_type, n, offset=o)
                o += self.sealed_size(n)
            return
        if not self.is13:
            self._seal12_batch(out, content_type, memoryview(out), [len(s) for s in slots])
            return
        enc = self.aead.encrypt_into
        iv = self.static_iv
        seq = self.seq
        for type_at, pt, hdr, body in self._views13(out, slots):
            out[type_at] = content_type
            enc((iv ^ seq).to_bytes(12, "big"), pt, hdr, body)
            seq += 1
        self.seq = seq

    def _views13(self, out: bytearray, slots: list[memoryview]) -> _Views13:
        """Per TLS 1.3 record: where the inner type goes, and the views the
        AEAD reads and writes (inner plaintext, header as AAD, body).

        The header is written here.  A pooled buffer sealed with the same
        layout before (every full batch of a bulk send) still holds its
        headers - the AEAD writes only the body - so its views are kept and
        the per-record loop is just the type byte and the AEAD call: the
        slicing and packing cost about a third as much as AES-256 itself.
        """
        laid = self._layout_cache
        cached = self._views
        if cached is not None and cached[0] is laid and self._laid(out, slots):
            return cached[1]
        mv = memoryview(out)
        tag = self.tag_size
        views = []
        o = 0
        for slot in slots:
            inner = len(slot)
            _HEADER.pack_into(out, o, _APPDATA, TLS_1_2_VERSION, inner + tag)
            body = mv[o + 5 : o + 5 + inner + tag]
            views.append((o + 4 + inner, body[:inner], mv[o : o + 5], body))
            o += 5 + inner + tag
        result = tuple(views)
        if laid is not None and self._laid(out, slots):  # a pooled buffer: worth keeping
            self._views = (laid, result)
        return result

    def _laid(self, out: bytearray, slots: list[memoryview]) -> bool:
        """Whether ``slots`` are the cached layout of the pooled buffer
        ``out`` (``layout`` handed them out again): whatever was written in
        ``out`` outside the slots since then is still there."""
        cached = self._layout_cache
        return (
            cached is not None
            and cached[0] is out
            and len(slots) == len(cached[2])
            and slots[0] is cached[2][0]
            and slots[-1] is cached[2][-1]
        )

    def frame_slots(self, out: bytearray, content_type: int, slots: list[memoryview]) -> None:
        """Frame records laid out by ``layout`` *without* encrypting them.

        The device path: headers, explicit nonces and TLS 1.3 inner types are
        written and the sequence number advances exactly as for sealing, but
        the plaintext stays and the tag space is left as it is; the NIC fills
        them (Linux: ``tls_device_record_close`` + ``tls_fill_prepend``).

        A pooled buffer framed the same way before (same layout, same type)
        still holds its headers - nothing but the plaintext slots and the
        tags are written in it between uses - so then only what changes per
        record is rewritten, with strided writes (one C call per byte
        position instead of a Python call per record).
        """
        n_rec = len(slots)
        cached = self._layout_cache
        laid = self._laid(out, slots)
        again = (
            laid
            and n_rec > 1
            and cached is not None
            and self._framed is not None
            and self._framed[0] is out
            and self._framed[1:] == (content_type, cached[1])
        )
        if again and self._reframe(out, content_type, slots):
            return
        tag = self.tag_size
        ex = self.explicit_size
        o = 0
        if self.is13:
            pack = _HEADER.pack_into
            for slot in slots:
                n = len(slot)
                slot[n - 1] = content_type
                pack(out, o, _APPDATA, TLS_1_2_VERSION, n + tag)
                o += 5 + n + tag
        elif ex:
            pack_ex = _HEADER_EX.pack_into
            explicit = self.explicit
            for slot in slots:
                n = len(slot)
                pack_ex(out, o, content_type, TLS_1_2_VERSION, ex + n + tag, explicit & _SEQ_MASK)
                explicit += 1
                o += 5 + ex + n + tag
            self.explicit = explicit & _SEQ_MASK
        else:
            pack = _HEADER.pack_into
            for slot in slots:
                n = len(slot)
                pack(out, o, content_type, TLS_1_2_VERSION, n + tag)
                o += 5 + n + tag
        if laid and cached is not None:
            self._framed = (out, content_type, cached[1])
        elif self._framed is not None and self._framed[0] is out:
            self._framed = None
        self._advance_by(n_rec)

    def _reframe(self, out: bytearray, content_type: int, slots: list[memoryview]) -> bool:
        """``frame_slots`` for a buffer whose headers are already in place.

        Records of one size sit at a fixed stride ``r``, so byte ``j`` of
        every record's varying field is one slice assignment with step
        ``r`` (two runs when the explicit nonce's low byte wraps inside the
        batch).  Returns False (frame normally) when the nonce would wrap.
        """
        n_rec = len(slots)
        k = n_rec - 1  # records of the full size (the last may be shorter)
        r = len(slots[0]) + TLS_HEADER_SIZE + self.explicit_size + self.tag_size
        mv = memoryview(out)
        if self.is13:
            first = TLS_HEADER_SIZE + len(slots[0]) - 1
            mv[first : first + r * k : r] = bytes((content_type,)) * k
            last = slots[-1]
            last[len(last) - 1] = content_type
        elif self.explicit_size:
            explicit = self.explicit
            if explicit + n_rec > _SEQ_MASK or n_rec > 256:
                return False
            i = 0
            while i < k:  # runs of records whose nonces differ in the low byte only
                e = explicit + i
                low = e & 0xFF
                m = min(k - i, 256 - low)
                high = (e >> 8).to_bytes(7, "big")
                o = r * i
                for j in range(7):
                    mv[o + 5 + j : o + 5 + j + r * m : r] = high[j : j + 1] * m
                mv[o + 12 : o + 12 + r * m : r] = bytes(range(low, low + m))
                i += m
            _HEADER_EX.pack_into(
                out, r * k, content_type, TLS_1_2_VERSION,
                self.explicit_size + len(slots[-1]) + self.tag_size, explicit + k,
            )
            self.explicit = explicit + n_rec
        self._advance_by(n_rec)
        return True

    def _advance_by(self, n_rec: int) -> None:
        # The record numbered 2^64-1 is the last a key may frame (see wrap()).
        seq = self.seq + n_rec
        if seq > _SEQ_MASK:
            self.exhausted = True
        self.seq = seq & _SEQ_MASK

    def _seal12_batch(
        self,
        out: bytearray,
        content_type: int,
        src: memoryview,
        sizes: list[int],
        from_src: bool = False,
    ) -> None:
        """The TLS 1.2 hot loop: per record one header pack, one AAD pack and
        one ``encrypt_into``; everything else hoisted out of the loop."""
        mv = memoryview(out)
        enc = self.aead.encrypt_into
        pack_aad = _AAD12.pack
        tag = self.tag_size
        ex = self.explicit_size
        seq = self.seq
        over = 5 + ex
        o = 0
        p = 0
        if ex:
            pack_hdr_ex = _HEADER_EX.pack_into
            salt = self.salt
            explicit = self.explicit
            for n in sizes:
                pack_hdr_ex(out, o, content_type, TLS_1_2_VERSION, ex + n + tag, explicit)
                pt = src[p : p + n] if from_src else mv[o + over : o + over + n]
                enc(
                    salt + explicit.to_bytes(8, "big"),
                    pt,
                    pack_aad(seq, content_type, TLS_1_2_VERSION, n),
                    mv[o + over : o + over + n + tag],
                )
                seq += 1
                explicit += 1
                o += over + n + tag
                p += n
            self.explicit = explicit
        else:
            pack_hdr = _HEADER.pack_into
            iv = self.static_iv
            for n in sizes:
                pack_hdr(out, o, content_type, TLS_1_2_VERSION, n + tag)
                pt = src[p : p + n] if from_src else mv[o + 5 : o + 5 + n]
                enc(
                    (iv ^ seq).to_bytes(12, "big"),
                    pt,
                    pack_aad(seq, content_type, TLS_1_2_VERSION, n),
                    mv[o + 5 : o + 5 + n + tag],
                )
                seq += 1
                o += 5 + n + tag
                p += n
        if seq > _SEQ_MASK:
            self.exhausted = True
        self.seq = seq & _SEQ_MASK

    def _advance(self, seq: int) -> None:
        if seq == _SEQ_MASK:
            self.exhausted = True
        self.seq = (seq + 1) & _SEQ_MASK


class RecordOpener(_Direction):
    """Opens records for one RX direction, advancing the sequence number."""

    exhausted = False

    def max_record_len(self) -> int:
        """Largest acceptable record body (Linux: TLS_MAX_PAYLOAD_SIZE + overhead)."""
        return TLS_MAX_PAYLOAD_SIZE + self.explicit_size + self.tag_size + int(self.is13)

    def min_record_len(self) -> int:
        return self.explicit_size + self.tag_size

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
        """
        buf = parser._buf
        mv = memoryview(buf)
        pos, end = parser._pos, parser._end
        unpack = _HEADER.unpack_from
        dec = self.aead.decrypt_into
        pack_aad = _AAD12.pack
        tag, ex, is13 = self.tag_size, self.explicit_size, self.is13
        max_len, min_len = parser.max_len, parser.min_len
        iv, salt = self.static_iv, self.salt
        seq = self.seq
        room = len(dst)
        off = nrec = padded = 0
        while end - pos >= TLS_HEADER_SIZE:
            ctype, version, length = unpack(buf, pos)
            body_at = pos + TLS_HEADER_SIZE
            nxt = body_at + length
            if (
                ctype != _APPDATA
                or version != TLS_1_2_VERSION
                or length > max_len
                or length < min_len
                or nxt > end
                or seq == _SEQ_MASK
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
                nonce = salt + buf[body_at : body_at + ex]
                aad = pack_aad(seq, _APPDATA, TLS_1_2_VERSION, inner)
            else:
                nonce = (iv ^ seq).to_bytes(12, "big")
                aad = pack_aad(seq, _APPDATA, TLS_1_2_VERSION, inner)
            try:
                dec(nonce, mv[body_at + ex : nxt], aad, out)
            except InvalidTag:
                out[:] = bytes(inner)
                break
            n = inner
            if is13:
                n -= 1
                if n < 0 or out[n] != _APPDATA:
                    while n >= 0 and out[n] == 0:
                        n -= 1
                    if n < 0 or out[n] != _APPDATA:
                        break  # a control record (or none): the slow path's
                    padded += 1
            off += n
            pos = nxt
            seq += 1
            nrec += 1
        if nrec:
            parser._pos = pos
            self.seq = seq
            if ex:
                self.explicit = (self.explicit + nrec) & _SEQ_MASK
        return nrec, off, padded

    def _unwrap(self, record: Buffer) -> tuple[int, bytes, memoryview, bytes | memoryview]:
        """Header checks, then (outer type, nonce, body past any explicit nonce, AAD)."""
        mv = memoryview(record)
        if len(mv) < TLS_HEADER_SIZE:
            raise os_error(errno.EBADMSG, "record shorter than its header")
        ctype, _version, length = _HEADER.unpack_from(mv)
        body = mv[TLS_HEADER_SIZE : TLS_HEADER_SIZE + length]
        if len(body) != length or length < self.min_record_len():
            raise os_error(errno.EBADMSG, "record shorter than its cipher overhead")
        seq = self.seq
        if self.is13:
            # tls_make_aad: Linux authenticates the header as application_data
            # whatever its type byte says (the parser checked the version).
            aad = mv[:TLS_HEADER_SIZE] if ctype == _APPDATA else _APPDATA_TYPE + bytes(mv[1:5])
            return ctype, (self.static_iv ^ seq).to_bytes(12, "big"), body, aad
        ex = self.explicit_size
        if ex:
            nonce = self.salt + bytes(body[:ex])
        else:
            nonce = (self.static_iv ^ seq).to_bytes(12, "big")
        aad = _AAD12.pack(seq, ctype, TLS_1_2_VERSION, length - ex - self.tag_size)
        return ctype, nonce, body[ex:], aad

    def _bad_tag(self, ctype: int) -> OSError:
        """EBADMSG for a record whose tag failed; a TLS 1.3 record whose
        header type was not application_data says so (``OuterTypeMismatch``)."""
        if self.is13 and ctype != _APPDATA:
            return OuterTypeMismatch(
                errno.EBADMSG, f"Bad message (TLS 1.3 record of outer type {ctype})", ctype
            )
        return os_error(errno.EBADMSG, "bad record MAC")

    def _finish(self, ctype: int, plain: memoryview) -> tuple[int, memoryview]:
        """Authenticated plaintext: find the TLS 1.3 inner type, advance the state."""
        if self.is13:
            end = len(plain) - 1
            while end >= 0 and plain[end] == 0:
                end -= 1
            if end < 0:
                raise NoContentType(
                    errno.EBADMSG, "Bad message (TLS 1.3 record with no content type)"
                )
            ctype = plain[end]
            plain = plain[:end]
        self._advance(self.seq)
        if self.explicit_size:  # getsockopt(TLS_RX) on Linux shows the iv advanced per record
            self.explicit = (self.explicit + 1) & _SEQ_MASK
        return ctype, plain

    def _advance(self, seq: int) -> None:
        if seq == _SEQ_MASK:
            self.exhausted = True
        self.seq = (seq + 1) & _SEQ_MASK


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

    def peek_header(self) -> tuple[int, int, int] | None:
        """(type, version, length) of the next record once its header is in."""
        if self._end - self._pos < TLS_HEADER_SIZE:
            return None
        ctype, version, length = _HEADER.unpack_from(self._buf, self._pos)
        if version != TLS_1_2_VERSION:
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
