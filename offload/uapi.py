"""The Linux kTLS user API: constants and ``crypto_info`` structs, byte for byte.

Everything here mirrors ``include/uapi/linux/tls.h`` so that code written
against this package runs unchanged against the real kernel: the same option
numbers, the same struct sizes (40/56/40/56 bytes) and the same field order
(``u16 version, u16 cipher_type`` in native byte order, then ``iv, key, salt,
rec_seq`` as plain byte arrays with no padding).  ``unpack`` validates the way
``do_tls_setsockopt_conf`` does and raises the errno the kernel would.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from offload.errors import os_error

# --- socket options -------------------------------------------------------

SOL_TLS = 282
SOL_TCP = 6
TCP_ULP = 31

TLS_TX = 1
TLS_RX = 2
TLS_TX_ZEROCOPY_RO = 3
TLS_RX_EXPECT_NO_PAD = 4
TLS_TX_MAX_PAYLOAD_LEN = 5  # u16, 64..2^14 (Linux 6.19+; RFC 8449 record_size_limit)
TLS_MIN_RECORD_SIZE_LIM = 64
"""RFC 8449's least record_size_limit, TLS_TX_MAX_PAYLOAD_LEN's floor; TLS 1.3
counts its content-type byte in the limit, so its least payload is 63."""

# cmsg types at level SOL_TLS (one byte of payload: the record type)
TLS_SET_RECORD_TYPE = 1
TLS_GET_RECORD_TYPE = 2

TLS_1_2_VERSION = 0x0303
TLS_1_3_VERSION = 0x0304
TLS_VERSIONS = (TLS_1_2_VERSION, TLS_1_3_VERSION)

# Largest plaintext a record may carry (RFC 8446 section 5.1, RFC 5246 6.2.1).
TLS_MAX_PAYLOAD_SIZE = 1 << 14
TLS_HEADER_SIZE = 5

# Values reported by the TLS_INFO_TXCONF / RXCONF diagnostics (net/tls).
TLS_CONF_BASE = 1
TLS_CONF_SW = 2
TLS_CONF_HW = 3
TLS_CONF_HW_RECORD = 4


class ContentType(IntEnum):
    """TLS record content types (RFC 8446 section 5.1)."""

    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class CipherType(IntEnum):
    """``TLS_CIPHER_*`` identifiers from linux/tls.h."""

    AES_GCM_128 = 51
    AES_GCM_256 = 52
    AES_CCM_128 = 53
    CHACHA20_POLY1305 = 54


@dataclass(frozen=True)
class CipherSpec:
    """Sizes of one cipher's crypto_info fields (``TLS_CIPHER_*_SIZE``)."""

    cipher: CipherType
    iv_size: int
    key_size: int
    salt_size: int
    tag_size: int
    rec_seq_size: int

    @property
    def struct_size(self) -> int:
        return 4 + self.iv_size + self.key_size + self.salt_size + self.rec_seq_size

    @property
    def nonce_size(self) -> int:
        """Length of the AEAD nonce: salt plus iv (always 12 here)."""
        return self.salt_size + self.iv_size

    def explicit_nonce_size(self, version: int) -> int:
        """Bytes of nonce carried in each record: TLS 1.2 AES only (RFC 5288)."""
        if version == TLS_1_2_VERSION and self.cipher != CipherType.CHACHA20_POLY1305:
            return self.iv_size
        return 0


CIPHER_SPECS: dict[int, CipherSpec] = {
    CipherType.AES_GCM_128: CipherSpec(CipherType.AES_GCM_128, 8, 16, 4, 16, 8),
    CipherType.AES_GCM_256: CipherSpec(CipherType.AES_GCM_256, 8, 32, 4, 16, 8),
    CipherType.AES_CCM_128: CipherSpec(CipherType.AES_CCM_128, 8, 16, 4, 16, 8),
    CipherType.CHACHA20_POLY1305: CipherSpec(CipherType.CHACHA20_POLY1305, 12, 32, 0, 16, 8),
}

_HEAD = struct.Struct("=HH")  # struct tls_crypto_info: native-endian u16 pair


@dataclass(frozen=True, repr=False)
class CryptoInfo:
    """One direction's crypto state, as given to ``setsockopt(SOL_TLS, TLS_TX)``.

    The repr never shows key material: these objects end up in logs and
    tracebacks, and secrets must stay secret unless asked for.
    """

    version: int
    iv: bytes
    key: bytes
    salt: bytes
    rec_seq: bytes
    cipher: ClassVar[CipherType]
    spec: ClassVar[CipherSpec]

    def __post_init__(self) -> None:
        s = self.spec
        for name, size in (
            ("iv", s.iv_size),
            ("key", s.key_size),
            ("salt", s.salt_size),
            ("rec_seq", s.rec_seq_size),
        ):
            value = getattr(self, name)
            if len(value) != size:
                raise ValueError(f"{type(self).__name__}.{name} must be {size} bytes")
        if self.version not in TLS_VERSIONS:
            raise ValueError(f"unknown TLS version 0x{self.version:04x}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(version=0x{self.version:04x}, "
            f"rec_seq={self.seq}, key=<redacted>)"
        )

    @property
    def seq(self) -> int:
        """The record sequence number as an integer (rec_seq is big-endian)."""
        return int.from_bytes(self.rec_seq, "big")

    def pack(self) -> bytes:
        """The exact bytes Linux expects as the setsockopt optval."""
        return (
            _HEAD.pack(self.version, int(self.cipher))
            + self.iv
            + self.key
            + self.salt
            + self.rec_seq
        )

    def with_seq(self, seq: int) -> CryptoInfo:
        """A copy with another record sequence number."""
        return type(self)(
            self.version, self.iv, self.key, self.salt, seq.to_bytes(self.spec.rec_seq_size, "big")
        )

    @staticmethod
    def unpack(data: bytes) -> CryptoInfo:
        """Parse a crypto_info blob, failing with the errno Linux gives.

        EINVAL for fewer than 4 bytes, an unknown version or cipher, or a
        length other than the cipher's struct size (do_tls_setsockopt_conf).
        """
        data = bytes(data)
        if len(data) < _HEAD.size:
            raise os_error(errno.EINVAL, "crypto_info shorter than struct tls_crypto_info")
        version, cipher = _HEAD.unpack_from(data)
        if version not in TLS_VERSIONS:
            raise os_error(errno.EINVAL, f"unknown TLS version 0x{version:04x}")
        cls = INFO_TYPES.get(cipher)
        if cls is None:
            raise os_error(errno.EINVAL, f"unknown cipher type {cipher}")
        s = cls.spec
        if len(data) != s.struct_size:
            raise os_error(
                errno.EINVAL,
                f"crypto_info for {cls.cipher.name} must be {s.struct_size} bytes, got {len(data)}",
            )
        o = _HEAD.size
        iv = data[o : o + s.iv_size]
        o += s.iv_size
        key = data[o : o + s.key_size]
        o += s.key_size
        salt = data[o : o + s.salt_size]
        o += s.salt_size
        rec_seq = data[o : o + s.rec_seq_size]
        return cls(version, iv, key, salt, rec_seq)

    @staticmethod
    def create(
        version: int, cipher: CipherType, *, key: bytes, iv: bytes, salt: bytes, seq: int = 0
    ) -> CryptoInfo:
        """Build the right subclass for ``cipher``."""
        cls = INFO_TYPES[int(cipher)]
        return cls(version, iv, key, salt, seq.to_bytes(cls.spec.rec_seq_size, "big"))

    @staticmethod
    def random(
        version: int,
        cipher: CipherType,
        *,
        seq: int = 0,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> CryptoInfo:
        """Fresh random key, IV and salt (drawn in that order) for a stream no
        handshake made: benchmarks and tests.  ``randbytes`` lets a seeded
        test draw them from its own ``random.Random``."""
        spec = CIPHER_SPECS[cipher]
        return CryptoInfo.create(
            version,
            cipher,
            key=randbytes(spec.key_size),
            iv=randbytes(spec.iv_size),
            salt=randbytes(spec.salt_size),
            seq=seq,
        )


@dataclass(frozen=True, repr=False)
class AesGcm128Info(CryptoInfo):
    """struct tls12_crypto_info_aes_gcm_128 (40 bytes)."""

    cipher: ClassVar[CipherType] = CipherType.AES_GCM_128
    spec: ClassVar[CipherSpec] = CIPHER_SPECS[CipherType.AES_GCM_128]


@dataclass(frozen=True, repr=False)
class AesGcm256Info(CryptoInfo):
    """struct tls12_crypto_info_aes_gcm_256 (56 bytes)."""

    cipher: ClassVar[CipherType] = CipherType.AES_GCM_256
    spec: ClassVar[CipherSpec] = CIPHER_SPECS[CipherType.AES_GCM_256]


@dataclass(frozen=True, repr=False)
class AesCcm128Info(CryptoInfo):
    """struct tls12_crypto_info_aes_ccm_128 (40 bytes)."""

    cipher: ClassVar[CipherType] = CipherType.AES_CCM_128
    spec: ClassVar[CipherSpec] = CIPHER_SPECS[CipherType.AES_CCM_128]


@dataclass(frozen=True, repr=False)
class Chacha20Poly1305Info(CryptoInfo):
    """struct tls12_crypto_info_chacha20_poly1305 (56 bytes, no salt)."""

    cipher: ClassVar[CipherType] = CipherType.CHACHA20_POLY1305
    spec: ClassVar[CipherSpec] = CIPHER_SPECS[CipherType.CHACHA20_POLY1305]


INFO_TYPES: dict[int, type[CryptoInfo]] = {
    cls.cipher: cls for cls in (AesGcm128Info, AesGcm256Info, AesCcm128Info, Chacha20Poly1305Info)
}
