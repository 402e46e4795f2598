"""An independent TLS record decoder for tests, written from the RFCs.

It shares no code with ``offload.record`` so that the layer's output is
checked against a second reading of RFC 5246/5288/7905/8446, not against
itself.  It also builds records by hand (for hostile-input tests).
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from offload.uapi import CipherType, CryptoInfo


def _aead(info: CryptoInfo) -> AESGCM | AESCCM | ChaCha20Poly1305:
    if info.cipher == CipherType.CHACHA20_POLY1305:
        return ChaCha20Poly1305(info.key)
    if info.cipher == CipherType.AES_CCM_128:
        return AESCCM(info.key)
    return AESGCM(info.key)


def split_records(data: bytes) -> list[bytes]:
    out = []
    i = 0
    while i < len(data):
        (n,) = struct.unpack(">H", data[i + 3 : i + 5])
        out.append(data[i : i + 5 + n])
        i += 5 + n
    if i != len(data):
        raise ValueError("trailing partial record")
    return out


def decrypt_records(info: CryptoInfo, data: bytes) -> list[tuple[int, bytes]]:
    """Decrypt a whole stream of records sent with ``info`` (seq from info)."""
    aead = _aead(info)
    seq = int.from_bytes(info.rec_seq, "big")
    out = []
    for rec in split_records(data):
        ctype = rec[0]
        body = rec[5:]
        if info.version == 0x0304:
            nonce = bytes(
                a ^ b for a, b in zip(info.salt + info.iv, seq.to_bytes(12, "big"), strict=True)
            )
            inner = aead.decrypt(nonce, body, rec[:5])
            inner = inner.rstrip(b"\0")
            out.append((inner[-1], inner[:-1]))
        elif info.cipher == CipherType.CHACHA20_POLY1305:
            nonce = bytes(a ^ b for a, b in zip(info.iv, seq.to_bytes(12, "big"), strict=True))
            aad = (
                seq.to_bytes(8, "big")
                + bytes([ctype])
                + b"\x03\x03"
                + struct.pack(">H", len(body) - 16)
            )
            out.append((ctype, aead.decrypt(nonce, body, aad)))
        else:
            nonce = info.salt + body[:8]
            aad = (
                seq.to_bytes(8, "big")
                + bytes([ctype])
                + b"\x03\x03"
                + struct.pack(">H", len(body) - 24)
            )
            out.append((ctype, aead.decrypt(nonce, body[8:], aad)))
        seq += 1
    return out


def encrypt_record(
    info: CryptoInfo,
    seq: int,
    ctype: int,
    plaintext: bytes,
    *,
    pad: int = 0,
    explicit: bytes = b"",
    outer: int = 23,
    aad_outer: int | None = None,
) -> bytes:
    """Build one record by hand (TLS 1.3 with optional zero padding).

    TLS 1.3 only: ``outer`` is the record header's type (opaque_type, 23 for
    every protected record); the AAD is that header (RFC 8446 5.2) unless
    ``aad_outer`` names another type for it (Linux's receive side always
    authenticates with 23, whatever the header says).
    """
    aead = _aead(info)
    if info.version == 0x0304:
        inner = plaintext + bytes([ctype]) + bytes(pad)
        header = bytes([outer, 3, 3]) + struct.pack(">H", len(inner) + 16)
        aad = header if aad_outer is None else bytes([aad_outer]) + header[1:]
        nonce = bytes(
            a ^ b for a, b in zip(info.salt + info.iv, seq.to_bytes(12, "big"), strict=True)
        )
        return header + aead.encrypt(nonce, inner, aad)
    aad = seq.to_bytes(8, "big") + bytes([ctype]) + b"\x03\x03" + struct.pack(">H", len(plaintext))
    if info.cipher == CipherType.CHACHA20_POLY1305:
        nonce = bytes(a ^ b for a, b in zip(info.iv, seq.to_bytes(12, "big"), strict=True))
        body = aead.encrypt(nonce, plaintext, aad)
    else:
        explicit = explicit or seq.to_bytes(8, "big")
        body = explicit + aead.encrypt(info.salt + explicit, plaintext, aad)
    return bytes([ctype, 3, 3]) + struct.pack(">H", len(body)) + body
