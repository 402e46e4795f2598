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
"""

from __future__ import annotations

import errno
import struct
from typing import Protocol, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from offload.errors import NoContentType, abort_error, os_error
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
_APPDATA = int(ContentType.APPLICATION_DATA)


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

    def sealed_size(self, plaintext_len: int) -> int:
        """Length of the record that carries ``plaintext_len`` bytes."""
        return (
            TLS_HEADER_SIZE + self.explicit_size + plaintext_len + self.tag_size + int(self.is13)
        )

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
        return out, slots

    def seal_slots(self, out: bytearray, content_type: int, slots: list[memoryview]) -> None:
        """Seal, in place, records laid out by ``layout`` whose slots are filled.

        Callers keep a batch within the sequence space left (``records_left``):
        the record numbered 2^64-1 is the last one a key may seal.
        """
        if not self.is13 and self.explicit + len(slots) > _SEQ_MASK:
            # Rare: the explicit nonce wraps inside the batch; go record by record.
            o = 0
            for slot in slots:
                n = len(slot)
                self.seal_in_place(out, content_type, n, offset=o)
                o += self.sealed_size(n)
            return
        if not self.is13:
            self._seal12_batch(out, content_type, memoryview(out), [len(s) for s in slots])
            return
        mv = memoryview(out)
        enc = self.aead.encrypt_into
        pack_hdr = _HEADER.pack_into
        tag = self.tag_size
        iv = self.static_iv
        seq = self.seq
        o = 0
        for slot in slots:
            inner = len(slot)
            slot[inner - 1] = content_type
            pack_hdr(out, o, _APPDATA, TLS_1_2_VERSION, inner + tag)
            body = mv[o + 5 : o + 5 + inner + tag]
            enc((iv ^ seq).to_bytes(12, "big"), body[:inner], mv[o : o + 5], body)
            if seq == _SEQ_MASK:
                self.exhausted = True
            seq = (seq + 1) & _SEQ_MASK
            o += 5 + inner + tag
        self.seq = seq

    def frame_slots(self, out: bytearray, content_type: int, slots: list[memoryview]) -> None:
        """Frame records laid out by ``layout`` *without* encrypting them.

        The device path: headers, explicit nonces and TLS 1.3 inner types are
        written and the sequence number advances exactly as for sealing, but
        the plaintext stays and the tag space stays zero; the NIC fills them
        (Linux: ``tls_device_record_close`` + ``tls_fill_prepend``).
        """
        tag = self.tag_size
        ex = self.explicit_size
        seq = self.seq
        explicit = self.explicit
        o = 0
        for slot in slots:
            n = len(slot)
            if self.is13:
                slot[n - 1] = content_type
                _HEADER.pack_into(out, o, _APPDATA, TLS_1_2_VERSION, n + tag)
                o += 5 + n + tag
            else:
                if ex:
                    _HEADER_EX.pack_into(
                        out, o, content_type, TLS_1_2_VERSION, ex + n + tag, explicit
                    )
                    explicit = (explicit + 1) & _SEQ_MASK
                else:
                    _HEADER.pack_into(out, o, content_type, TLS_1_2_VERSION, n + tag)
                o += 5 + ex + n + tag
            if seq == _SEQ_MASK:
                self.exhausted = True
            seq = (seq + 1) & _SEQ_MASK
        self.seq = seq
        self.explicit = explicit

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
        mv = memoryview(record)
        if len(mv) < TLS_HEADER_SIZE:
            raise os_error(errno.EBADMSG, "record shorter than its header")
        ctype, _version, length = _HEADER.unpack_from(mv)
        body = mv[TLS_HEADER_SIZE : TLS_HEADER_SIZE + length]
        if len(body) != length or length < self.min_record_len():
            raise os_error(errno.EBADMSG, "record shorter than its cipher overhead")
        seq = self.seq
        if self.is13:
            try:
                inner = self.aead.decrypt(
                    (self.static_iv ^ seq).to_bytes(12, "big"), body, mv[:TLS_HEADER_SIZE]
                )
            except InvalidTag:
                raise os_error(errno.EBADMSG, "bad record MAC") from None
            end = len(inner) - 1
            while end >= 0 and inner[end] == 0:
                end -= 1
            if end < 0:
                raise NoContentType(
                    errno.EBADMSG, "Bad message (TLS 1.3 record with no content type)"
                )
            self._advance(seq)
            return inner[end], memoryview(inner)[:end]
        ex = self.explicit_size
        n = length - ex - self.tag_size
        if ex:
            nonce = self.salt + bytes(body[:ex])
        else:
            nonce = (self.static_iv ^ seq).to_bytes(12, "big")
        aad = _AAD12.pack(seq, ctype, TLS_1_2_VERSION, n)
        try:
            plain = self.aead.decrypt(nonce, body[ex:], aad)
        except InvalidTag:
            raise os_error(errno.EBADMSG, "bad record MAC") from None
        self._advance(seq)
        if ex:  # getsockopt(TLS_RX) on Linux shows the iv advanced per record
            self.explicit = (self.explicit + 1) & _SEQ_MASK
        return ctype, memoryview(plain)

    def _advance(self, seq: int) -> None:
        if seq == _SEQ_MASK:
            self.exhausted = True
        self.seq = (seq + 1) & _SEQ_MASK


class RecordParser:
    """Cuts a TLS byte stream into whole records; accepts any split of it.

    ``feed`` appends bytes; ``next_record`` returns the next complete record
    (header included) or None.  Header checks follow ``tls_rx_msg_size``:
    the version field must be 0x0303 (EINVAL), the length must not exceed
    2^14 plus the cipher overhead (EMSGSIZE) and must cover the overhead
    (EBADMSG).  The checks run as soon as the 5 header bytes are in, so a
    hostile length never makes the parser buffer more than one record.
    """

    def __init__(self, max_len: int = TLS_MAX_PAYLOAD_SIZE + 256, min_len: int = 0) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_len = max_len
        self.min_len = min_len

    def feed(self, data: Buffer) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a record."""
        return len(self._buf) - self._pos

    def peek_header(self) -> tuple[int, int, int] | None:
        """(type, version, length) of the next record once its header is in."""
        if len(self._buf) - self._pos < TLS_HEADER_SIZE:
            return None
        ctype, version, length = _HEADER.unpack_from(self._buf, self._pos)
        if version != TLS_1_2_VERSION:
            raise abort_error(errno.EINVAL, f"record version 0x{version:04x} is not 0x0303")
        if length > self.max_len:
            raise abort_error(errno.EMSGSIZE, f"record length {length} exceeds {self.max_len}")
        if length < self.min_len:
            raise abort_error(errno.EBADMSG, f"record length {length} below cipher overhead")
        return ctype, version, length

    def next_record(self) -> bytes | None:
        head = self.peek_header()
        if head is None:
            return None
        end = self._pos + TLS_HEADER_SIZE + head[2]
        if end > len(self._buf):
            return None
        with memoryview(self._buf) as view:
            rec = bytes(view[self._pos : end])
        self._pos = end
        if self._pos > (1 << 20):
            del self._buf[: self._pos]
            self._pos = 0
        return rec
