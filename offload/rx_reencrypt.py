"""``tls_device_reencrypt``: put back the ciphertext of a partly decrypted record.

A record whose packets came partly decrypted by the NIC (a segment lost,
reordered, or the tag's packet failing) is neither plaintext nor
ciphertext.  Linux runs the record's AEAD keystream over the whole record
and copies the output only over the parts the NIC had decrypted, which
turns them back into ciphertext; the record is then decrypted - and its
tag checked - by the software path, exactly once.

AES-GCM and ChaCha20 are stream ciphers: ciphertext = plaintext XOR a
keystream that depends only on key, nonce and position (GCM counter 2 on,
ChaCha20 block 1 on), so encrypting the decrypted bytes at their position
gives back the bytes that came off the wire.  The keystream must be the
one the NIC used: the key and record number of the device context that
decrypted those bytes (the caller passes them), which after a TLS 1.3
KeyUpdate may differ from the software context's.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from offload.framing import ProtInfo
from offload.uapi import TLS_HEADER_SIZE, CipherType, CryptoInfo


def reencrypt(
    record: memoryview, info: CryptoInfo, record_sn: int, ranges: list[tuple[int, int]]
) -> int:
    """Re-encrypt ``record[a:b]`` for each ``(a, b)`` in ``ranges`` in place.

    ``record`` is the whole record, header included; ``ranges`` are offsets
    into it, clipped here to the protected body (header, explicit nonce
    and tag are never changed by a NIC).  ``info``/``record_sn`` name the
    key and record number the NIC decrypted with.  Returns the number of
    bytes re-encrypted.
    """
    prot = ProtInfo.from_info(info)
    body_at = prot.prepend_size
    body_end = len(record) - prot.tag_size
    spans = [(max(a, body_at), min(b, body_end)) for a, b in ranges]
    spans = [(a, b) for a, b in spans if a < b]
    if not spans:
        return 0
    nonce = prot.nonce(record_sn, record[TLS_HEADER_SIZE:body_at])
    if info.cipher == CipherType.CHACHA20_POLY1305:
        enc = Cipher(algorithms.ChaCha20(info.key, b"\1\0\0\0" + nonce), None).encryptor()
    else:
        enc = Cipher(algorithms.AES(info.key), modes.GCM(nonce)).encryptor()
    stream = enc.update(bytes(record[body_at:body_end]))
    for a, b in spans:
        record[a:b] = stream[a - body_at : b - body_at]
    return sum(b - a for a, b in spans)


__all__ = ["reencrypt"]
