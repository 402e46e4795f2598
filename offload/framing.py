"""TLS record framing: header, nonce, additional data, TLS 1.3 inner plaintext.

The one home of the RFC formulas every record path needs, as Linux's
``include/net/tls.h`` holds ``tls_make_aad``, ``tls_fill_prepend`` and
``tls_xor_iv_with_seq`` for ``tls_sw.c``, ``tls_device.c`` and
``tls_device_fallback.c`` alike.  Here they serve the software sealer and
opener (``offload.record``), the batch loops (``offload.batch``), the
software fallback (``offload.fallback``) and the ``sim-nic`` driver.

* Record header (RFC 5246 6.2, RFC 8446 5.1): type, legacy version 0x0303,
  length of what follows.  Protected TLS 1.3 records carry opaque type 23.
* TLS 1.2 AES-GCM/CCM (RFC 5288, RFC 6655): nonce = salt(4) || explicit(8),
  the explicit part sent at the start of each record body; ChaCha20-Poly1305
  (RFC 7905) and every TLS 1.3 cipher (RFC 8446 5.3): nonce = (salt || iv)
  XOR the record sequence number, nothing explicit.
* Additional data: TLS 1.2 seq(8) || type || 0x0303 || plaintext length;
  TLS 1.3 the record header, which ``tls_make_aad`` builds as opaque type
  23, 0x0303, inner length plus tag - whatever type the received header
  says (see ``offload.errors.OuterTypeMismatch``).
* TLS 1.3 inner plaintext (RFC 8446 5.2): content, real type, zero padding.

Hot loops (sealing a batch, opening a run of records, the NIC's per-segment
walk) bind the ``struct`` objects below once and inline ``iv ^ seq``: a
helper call per record costs more than the framing it saves.  Everywhere
else the functions and :class:`ProtInfo` are the API.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypeAlias

from offload.uapi import (
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_HEADER_SIZE,
    TLS_MAX_PAYLOAD_SIZE,
    ContentType,
    CryptoInfo,
)

Buffer: TypeAlias = bytes | bytearray | memoryview

HEADER = struct.Struct(">BHH")
"""Record header: type, legacy_record_version, length of the body."""
HEADER_EX = struct.Struct(">BHHQ")
"""TLS 1.2 AES record header followed by its 8-byte explicit nonce."""
AAD12 = struct.Struct(">QBHH")
"""TLS 1.2 additional data: seq_num, type, version, plaintext length."""

RECORD_VERSION = TLS_1_2_VERSION
"""legacy_record_version of every record this layer writes or accepts."""
APPDATA = int(ContentType.APPLICATION_DATA)
"""The type byte of application data, and the opaque type of TLS 1.3 records."""
SEQ_MASK = (1 << 64) - 1
"""Record sequence numbers (and TLS 1.2 explicit nonces) are 64 bits."""
NONCE_SIZE = 12


def pack_header(content_type: int, length: int) -> bytes:
    """The 5-byte header of a record whose body is ``length`` bytes."""
    return HEADER.pack(content_type, RECORD_VERSION, length)


def parse_header(buf: Buffer, offset: int = 0) -> tuple[int, int, int]:
    """(type, version, body length) of the header at ``buf[offset:]``; no checks
    (``RecordParser.peek_header`` applies Linux's)."""
    ctype, version, length = HEADER.unpack_from(buf, offset)
    return ctype, version, length


def xor_iv(static_iv: int, seq: int) -> bytes:
    """The per-record nonce of TLS 1.3 and ChaCha20: the 12-byte static IV
    (salt || iv, as an integer) XOR the sequence number (RFC 8446 5.3;
    Linux ``tls_xor_iv_with_seq``)."""
    return (static_iv ^ seq).to_bytes(NONCE_SIZE, "big")


def tls12_aad(seq: int, content_type: int, plaintext_len: int) -> bytes:
    """TLS 1.2 additional data (RFC 5246 6.2.3.3)."""
    return AAD12.pack(seq, content_type, RECORD_VERSION, plaintext_len)


def tls13_aad(record_len: int) -> bytes:
    """TLS 1.3 additional data for a record whose body is ``record_len``
    bytes (inner plaintext plus tag): the header as ``tls_make_aad`` writes
    it, opaque type 23 and version 0x0303 whatever the received header
    says (RFC 8446 5.2)."""
    return HEADER.pack(APPDATA, RECORD_VERSION, record_len)


def inner_plaintext(content: Buffer, content_type: int, pad: int = 0) -> bytes:
    """TLSInnerPlaintext: content, the real type, ``pad`` zero bytes."""
    return bytes(content) + bytes((content_type,)) + bytes(pad)


def inner_type_at(plain: Buffer) -> int:
    """Index of the real content type in a decrypted TLS 1.3 inner plaintext:
    the last non-zero byte (everything after it is padding); -1 when the
    plaintext is all zeros (no content type: EBADMSG)."""
    end = len(plain) - 1
    while end >= 0 and plain[end] == 0:
        end -= 1
    return end


@dataclass(frozen=True, slots=True)
class ProtInfo:
    """What framing needs to know about one direction's key: Linux's
    ``struct tls_prot_info`` (sizes) plus the static nonce material of its
    ``cipher_context`` (salt and IV).  The moving parts - sequence number,
    next explicit nonce - belong to whoever frames records with it.
    """

    version: int
    tag_size: int
    explicit_size: int
    """Nonce bytes carried in each record (``iv_size``): 8 for TLS 1.2
    AES-GCM/CCM, 0 for ChaCha20 and TLS 1.3."""
    tail_size: int
    """1 for TLS 1.3 (the inner content type), else 0."""
    salt: bytes
    static_iv: int
    """salt || iv as one integer, XORed with the sequence number."""

    @classmethod
    def from_info(cls, info: CryptoInfo) -> ProtInfo:
        spec = info.spec
        return cls(
            version=info.version,
            tag_size=spec.tag_size,
            explicit_size=spec.explicit_nonce_size(info.version),
            tail_size=int(info.version == TLS_1_3_VERSION),
            salt=info.salt,
            static_iv=int.from_bytes(info.salt + info.iv, "big"),
        )

    @property
    def is13(self) -> bool:
        return self.version == TLS_1_3_VERSION

    @property
    def prepend_size(self) -> int:
        """Bytes before the ciphertext: header plus explicit nonce."""
        return TLS_HEADER_SIZE + self.explicit_size

    @property
    def overhead_size(self) -> int:
        """Bytes a record adds to its content: prepend, inner type, tag."""
        return TLS_HEADER_SIZE + self.explicit_size + self.tail_size + self.tag_size

    def sealed_size(self, content_len: int) -> int:
        """Length of the record that carries ``content_len`` bytes (no padding)."""
        return self.overhead_size + content_len

    def max_body_len(self) -> int:
        """Largest acceptable record body (Linux: TLS_MAX_PAYLOAD_SIZE + overhead)."""
        return TLS_MAX_PAYLOAD_SIZE + self.explicit_size + self.tag_size + self.tail_size

    def min_body_len(self) -> int:
        """Smallest record body that can hold the cipher's overhead."""
        return self.explicit_size + self.tag_size

    def nonce(self, seq: int, explicit: Buffer = b"") -> bytes:
        """The AEAD nonce of record ``seq``; TLS 1.2 AES takes the record's
        ``explicit`` nonce bytes instead of the sequence number."""
        if self.explicit_size:
            return self.salt + bytes(explicit)
        return xor_iv(self.static_iv, seq)

    def aad(self, seq: int, content_type: int, inner_len: int) -> bytes:
        """``tls_make_aad``: the additional data of record ``seq`` whose
        protected plaintext is ``inner_len`` bytes (TLS 1.3: content, type
        and padding; ``content_type`` is then ignored: always 23)."""
        if self.version == TLS_1_3_VERSION:
            return tls13_aad(inner_len + self.tag_size)
        return AAD12.pack(seq, content_type, RECORD_VERSION, inner_len)

    def fill_prepend(
        self, buf: bytearray, offset: int, content_type: int, inner_len: int, explicit: int = 0
    ) -> None:
        """``tls_fill_prepend``: write the header (TLS 1.3: opaque type 23)
        and, for TLS 1.2 AES, the explicit nonce at ``buf[offset:]`` for a
        record whose protected plaintext is ``inner_len`` bytes."""
        length = self.explicit_size + inner_len + self.tag_size
        if self.explicit_size:
            HEADER_EX.pack_into(buf, offset, content_type, RECORD_VERSION, length, explicit)
            return
        ctype = APPDATA if self.version == TLS_1_3_VERSION else content_type
        HEADER.pack_into(buf, offset, ctype, RECORD_VERSION, length)
