"""TLS key schedules, reduced to what a kTLS ``crypto_info`` needs.

The kernel never runs a handshake: user space hands it a key, an IV split
into ``salt`` and ``iv`` and a record sequence number.  This module turns the
secrets a handshake produces (the TLS 1.2 master secret and randoms, or a
TLS 1.3 traffic secret) into exactly those bytes, and into the
:class:`offload.uapi.CryptoInfo` struct the way OpenSSL's ``ssl/ktls.c``
fills it, so that the same values work with this package's user-space record
layer and with a real ``setsockopt(SOL_TLS, TLS_TX, ...)``.

Everything here is sans-I/O: pure functions from bytes to bytes.  HMAC, the
TLS 1.2 PRF (RFC 5246 section 5) and HKDF (RFC 5869) are written on top of
the standard library's :mod:`hmac`, on purpose: the tests check them against
published vectors and against ``cryptography``'s independent HKDF, which is
only a real cross-check if this module does not call it.

Secrets never appear in exception messages or reprs: these values end up in
logs and tracebacks.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from offload.uapi import (
    CIPHER_SPECS,
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    CipherType,
    CryptoInfo,
)

__all__ = [
    "Side",
    "Suite",
    "SuiteInfo",
    "Tls12Keys",
    "UnsupportedSuiteError",
    "crypto_info_tls12",
    "crypto_info_tls13",
    "derive_secret",
    "hkdf_expand",
    "hkdf_expand_label",
    "hkdf_extract",
    "suite_from_code",
    "suite_from_openssl_name",
    "tls12_key_block",
    "tls12_prf",
    "tls13_next_secret",
    "tls13_traffic_keys",
]

Side = Literal["client", "server"]
"""Whose *write* direction a set of keys protects."""

# Hashes a TLS 1.2 PRF or TLS 1.3 HKDF may use with the suites below.  Kept
# to an explicit list so a typo fails early with a clear message instead of
# deep inside hashlib, and so a caller cannot smuggle in a non-TLS hash.
_HASHES = ("sha256", "sha384")

_TLS13_LABEL_PREFIX = b"tls13 "
_AEAD_NONCE = 12  # every AEAD here uses a 96-bit nonce
_EXPLICIT_NONCE = 8  # RFC 5288 / RFC 6655: nonce_explicit carried per record
_MAX_SEQ = (1 << 64) - 1


class UnsupportedSuiteError(KeyError, ValueError):
    """The negotiated cipher suite has no kTLS ``crypto_info`` equivalent.

    Both a :class:`KeyError` (it is a failed lookup by name or code point)
    and a :class:`ValueError` (the caller passed a value the layer cannot
    use), so either ``except`` clause a caller naturally writes catches it.
    """

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class SuiteInfo:
    """What the record layer needs to know about one cipher suite."""

    code: int
    openssl_name: str
    iana_name: str
    version: int
    cipher: CipherType
    hash_name: str

    @property
    def key_length(self) -> int:
        """Bytes of AEAD key (16 or 32)."""
        return CIPHER_SPECS[self.cipher].key_size

    @property
    def iv_length(self) -> int:
        """Bytes of IV the key schedule produces for this suite.

        TLS 1.3 always derives a full 12-byte IV.  TLS 1.2 derives only the
        4-byte implicit "salt" for AES-GCM (RFC 5288) and AES-CCM (RFC 6655),
        the other 8 bytes travelling in each record, but the full 12 bytes
        for ChaCha20-Poly1305 (RFC 7905), which has no explicit nonce.
        """
        if self.version == TLS_1_3_VERSION or self.cipher == CipherType.CHACHA20_POLY1305:
            return _AEAD_NONCE
        return CIPHER_SPECS[self.cipher].salt_size


def _info(
    code: int,
    openssl_name: str,
    iana_name: str,
    version: int,
    cipher: CipherType,
    hash_name: str = "sha256",
) -> SuiteInfo:
    return SuiteInfo(code, openssl_name, iana_name, version, cipher, hash_name)


_V12, _V13 = TLS_1_2_VERSION, TLS_1_3_VERSION
_GCM128, _GCM256 = CipherType.AES_GCM_128, CipherType.AES_GCM_256
_CCM128, _CHACHA = CipherType.AES_CCM_128, CipherType.CHACHA20_POLY1305

# Code points and OpenSSL names as printed by ``openssl ciphers -V`` (3.0);
# IANA names from the TLS Cipher Suites registry.  Key exchange and
# authentication do not matter to the record layer, so every suite whose
# bulk cipher Linux supports is listed, not just the ECDHE ones.
_SUITES: tuple[SuiteInfo, ...] = (
    # TLS 1.3 (RFC 8446 appendix B.4): OpenSSL uses the IANA names.
    _info(0x1301, "TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", _V13, _GCM128),
    _info(0x1302, "TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384", _V13, _GCM256, "sha384"),
    _info(0x1303, "TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256", _V13, _CHACHA),
    _info(0x1304, "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_SHA256", _V13, _CCM128),
    # TLS 1.2 ECDHE (RFC 5289, RFC 7905, RFC 7251)
    _info(
        0xC02B,
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        _V12,
        _GCM128,
    ),
    _info(
        0xC02C,
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        _V12,
        _GCM256,
        "sha384",
    ),
    _info(
        0xC02F,
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        _V12,
        _GCM128,
    ),
    _info(
        0xC030,
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        _V12,
        _GCM256,
        "sha384",
    ),
    _info(
        0xCCA8,
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        _V12,
        _CHACHA,
    ),
    _info(
        0xCCA9,
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        _V12,
        _CHACHA,
    ),
    _info(0xC0AC, "ECDHE-ECDSA-AES128-CCM", "TLS_ECDHE_ECDSA_WITH_AES_128_CCM", _V12, _CCM128),
    # TLS 1.2 DHE-RSA (RFC 5288, RFC 7905, RFC 6655)
    _info(
        0x009E, "DHE-RSA-AES128-GCM-SHA256", "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", _V12, _GCM128
    ),
    _info(
        0x009F,
        "DHE-RSA-AES256-GCM-SHA384",
        "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
        _V12,
        _GCM256,
        "sha384",
    ),
    _info(
        0xCCAA,
        "DHE-RSA-CHACHA20-POLY1305",
        "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        _V12,
        _CHACHA,
    ),
    _info(0xC09E, "DHE-RSA-AES128-CCM", "TLS_DHE_RSA_WITH_AES_128_CCM", _V12, _CCM128),
    # TLS 1.2 static RSA key exchange (RFC 5288, RFC 6655): no forward
    # secrecy, but still in OpenSSL's default list, so a peer may pick it.
    _info(0x009C, "AES128-GCM-SHA256", "TLS_RSA_WITH_AES_128_GCM_SHA256", _V12, _GCM128),
    _info(0x009D, "AES256-GCM-SHA384", "TLS_RSA_WITH_AES_256_GCM_SHA384", _V12, _GCM256, "sha384"),
    _info(0xC09C, "AES128-CCM", "TLS_RSA_WITH_AES_128_CCM", _V12, _CCM128),
)

_BY_CODE: dict[int, SuiteInfo] = {s.code: s for s in _SUITES}
_BY_NAME: dict[str, int] = {
    **{s.openssl_name: s.code for s in _SUITES},
    **{s.iana_name: s.code for s in _SUITES},
}


class Suite(IntEnum):
    """The cipher suites whose records Linux kTLS can protect.

    The value is the IANA code point (what goes on the wire), in the style of
    aioquic's ``CipherSuite``; the properties give what the key schedule and
    ``crypto_info`` need.  Linux knows only four bulk ciphers (AES-128-GCM,
    AES-256-GCM, AES-128-CCM, ChaCha20-Poly1305), so CBC, AES-256-CCM,
    CCM_8 and ARIA suites are deliberately absent: there is no struct to hand
    their keys to.
    """

    TLS_AES_128_GCM_SHA256 = 0x1301
    TLS_AES_256_GCM_SHA384 = 0x1302
    TLS_CHACHA20_POLY1305_SHA256 = 0x1303
    TLS_AES_128_CCM_SHA256 = 0x1304
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 = 0xC02B
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 = 0xC02C
    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 = 0xC02F
    TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 = 0xC030
    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 = 0xCCA8
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 = 0xCCA9
    TLS_ECDHE_ECDSA_WITH_AES_128_CCM = 0xC0AC
    TLS_DHE_RSA_WITH_AES_128_GCM_SHA256 = 0x009E
    TLS_DHE_RSA_WITH_AES_256_GCM_SHA384 = 0x009F
    TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256 = 0xCCAA
    TLS_DHE_RSA_WITH_AES_128_CCM = 0xC09E
    TLS_RSA_WITH_AES_128_GCM_SHA256 = 0x009C
    TLS_RSA_WITH_AES_256_GCM_SHA384 = 0x009D
    TLS_RSA_WITH_AES_128_CCM = 0xC09C

    @property
    def info(self) -> SuiteInfo:
        """The full description of this suite."""
        return _BY_CODE[self.value]

    @property
    def openssl_name(self) -> str:
        """The name OpenSSL (and so pyOpenSSL's ``get_cipher_name``) uses."""
        return self.info.openssl_name

    @property
    def version(self) -> int:
        """``TLS_1_2_VERSION`` or ``TLS_1_3_VERSION``: suites are version-bound."""
        return self.info.version

    @property
    def cipher(self) -> CipherType:
        """The Linux ``TLS_CIPHER_*`` this suite's records use."""
        return self.info.cipher

    @property
    def hash_name(self) -> str:
        """The PRF (TLS 1.2) or HKDF (TLS 1.3) hash, as a :mod:`hashlib` name."""
        return self.info.hash_name

    @property
    def key_length(self) -> int:
        """Bytes of AEAD key."""
        return self.info.key_length

    @property
    def iv_length(self) -> int:
        """Bytes of IV the key schedule derives (see :attr:`SuiteInfo.iv_length`)."""
        return self.info.iv_length


def suite_from_openssl_name(name: str) -> Suite:
    """Look a suite up by its OpenSSL name (``ECDHE-RSA-AES128-GCM-SHA256``).

    IANA names (``TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256``) are accepted too,
    since GnuTLS, Wireshark and the registry use them.  A suite Linux kTLS
    cannot carry (CBC, CCM_8, ARIA, AES-256-CCM, ...) raises
    :class:`UnsupportedSuiteError` saying so, rather than a bare KeyError,
    because "this connection cannot be offloaded" is the message the user
    needs.
    """
    code = _BY_NAME.get(name)
    if code is None:
        supported = ", ".join(s.openssl_name for s in _SUITES)
        raise UnsupportedSuiteError(
            f"cipher suite {name!r} cannot be offloaded: kernel TLS supports only "
            f"AES-128/256-GCM, AES-128-CCM and ChaCha20-Poly1305 suites ({supported})"
        )
    return Suite(code)


def suite_from_code(code: int) -> Suite:
    """Look a suite up by its IANA code point (``0x1301``, ``0xC02F``, ...)."""
    if code not in _BY_CODE:
        raise UnsupportedSuiteError(
            f"cipher suite 0x{code:04X} cannot be offloaded: no kernel TLS cipher for it"
        )
    return Suite(code)


# --- primitives -------------------------------------------------------------


def _digest_size(hash_name: str) -> int:
    if hash_name not in _HASHES:
        raise ValueError(f"unsupported hash {hash_name!r}; expected one of {', '.join(_HASHES)}")
    return hashlib.new(hash_name).digest_size


def tls12_prf(
    secret: bytes, label: bytes, seed: bytes, length: int, hash_name: str = "sha256"
) -> bytes:
    """The TLS 1.2 PRF: ``P_<hash>(secret, label + seed)`` (RFC 5246 section 5).

    ``P_hash`` chains ``A(i) = HMAC(secret, A(i-1))`` from ``A(0) = label +
    seed`` and concatenates ``HMAC(secret, A(i) + label + seed)`` until
    ``length`` bytes are produced.  TLS 1.2 suites use SHA-256 unless the
    suite names SHA-384 (RFC 5246 section 5, RFC 5288 section 3).
    """
    _digest_size(hash_name)
    if length < 0:
        raise ValueError("PRF output length must not be negative")
    full_seed = label + seed
    out = bytearray()
    a = full_seed
    while len(out) < length:
        a = hmac.digest(secret, a, hash_name)
        out += hmac.digest(secret, a + full_seed, hash_name)
    return bytes(out[:length])


def hkdf_extract(salt: bytes, ikm: bytes, hash_name: str) -> bytes:
    """HKDF-Extract (RFC 5869 section 2.2); an empty salt means HashLen zeros."""
    size = _digest_size(hash_name)
    return hmac.digest(salt or bytes(size), ikm, hash_name)


def hkdf_expand(prk: bytes, info: bytes, length: int, hash_name: str) -> bytes:
    """HKDF-Expand (RFC 5869 section 2.3)."""
    size = _digest_size(hash_name)
    if not 0 <= length <= 255 * size:
        raise ValueError(f"HKDF-Expand length must be 0..{255 * size}, got {length}")
    out = bytearray()
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), hash_name)
        out += block
        counter += 1
    return bytes(out[:length])


def hkdf_expand_label(
    secret: bytes, label: bytes, context: bytes, length: int, hash_name: str
) -> bytes:
    """HKDF-Expand-Label (RFC 8446 section 7.1).

    ``label`` is given without the ``"tls13 "`` prefix (``b"key"``,
    ``b"traffic upd"``); the prefix is added here, as every TLS 1.3 label
    carries it and forgetting it is the classic interop bug.  The info
    string is the ``HkdfLabel`` struct: u16 length, u8-prefixed label,
    u8-prefixed context.
    """
    full_label = _TLS13_LABEL_PREFIX + label
    if len(full_label) > 255:
        raise ValueError("HKDF label longer than 255 bytes")
    if len(context) > 255:
        raise ValueError("HKDF context longer than 255 bytes")
    if not 0 <= length < 1 << 16:
        raise ValueError(f"HKDF-Expand-Label length must fit in 16 bits, got {length}")
    hkdf_label = (
        length.to_bytes(2, "big")
        + bytes([len(full_label)])
        + full_label
        + bytes([len(context)])
        + context
    )
    return hkdf_expand(secret, hkdf_label, length, hash_name)


def derive_secret(secret: bytes, label: bytes, transcript_hash: bytes, hash_name: str) -> bytes:
    """Derive-Secret (RFC 8446 section 7.1), given the transcript hash.

    The RFC defines it over the handshake messages; it takes their hash here
    because the caller (a handshake engine) keeps a running hash, and the
    key schedule should not need the messages themselves.
    """
    return hkdf_expand_label(secret, label, transcript_hash, _digest_size(hash_name), hash_name)


# --- TLS 1.3 -------------------------------------------------------------------


def _require_version(suite: Suite, version: int) -> None:
    if suite.version != version:
        want = "1.3" if version == TLS_1_3_VERSION else "1.2"
        raise ValueError(f"{suite.openssl_name} is not a TLS {want} cipher suite")


def _check_secret(secret: bytes, suite: Suite) -> None:
    size = _digest_size(suite.hash_name)
    if len(secret) != size:
        raise ValueError(
            f"{suite.openssl_name} traffic secret must be {size} bytes, got {len(secret)}"
        )


def tls13_traffic_keys(secret: bytes, suite: Suite) -> tuple[bytes, bytes]:
    """The ``(key, iv)`` pair for one direction (RFC 8446 section 7.3).

    ``key = HKDF-Expand-Label(secret, "key", "", key_length)`` and
    ``iv = HKDF-Expand-Label(secret, "iv", "", 12)``.  Works for handshake
    and application traffic secrets alike.
    """
    _require_version(suite, TLS_1_3_VERSION)
    _check_secret(secret, suite)
    key = hkdf_expand_label(secret, b"key", b"", suite.key_length, suite.hash_name)
    iv = hkdf_expand_label(secret, b"iv", b"", suite.iv_length, suite.hash_name)
    return key, iv


def tls13_next_secret(secret: bytes, suite: Suite) -> bytes:
    """``application_traffic_secret_N+1`` after a KeyUpdate (RFC 8446 section 7.2).

    ``HKDF-Expand-Label(secret_N, "traffic upd", "", Hash.length)``.  The
    kernel never computes this: on a KeyUpdate user space derives the next
    secret here and installs it with another ``setsockopt(TLS_TX/TLS_RX)``,
    with the record sequence number back at 0.
    """
    _require_version(suite, TLS_1_3_VERSION)
    _check_secret(secret, suite)
    size = _digest_size(suite.hash_name)
    return hkdf_expand_label(secret, b"traffic upd", b"", size, suite.hash_name)


def _rec_seq(seq: int) -> int:
    if not 0 <= seq <= _MAX_SEQ:
        raise ValueError("record sequence number must fit in 64 bits")
    return seq


def crypto_info_tls13(secret: bytes, suite: Suite, seq: int) -> CryptoInfo:
    """The ``crypto_info`` for one TLS 1.3 direction, as OpenSSL's ktls.c fills it.

    The kernel forms the nonce as ``(salt || iv) XOR seq``, so the 12-byte
    IV is split: AES-GCM/CCM get ``salt = iv[:4]`` and ``iv = iv[4:]``;
    ChaCha20-Poly1305 has no salt field and takes all 12 bytes as ``iv``.
    ``seq`` is the number of records already protected under this secret
    (for a server's TX that includes the NewSessionTicket records).

    OpenSSL itself declines to offload TLS 1.3 AES-CCM (it was broken on 5.x
    kernels); the struct is still well defined, so it is built here and the
    caller decides.
    """
    key, iv = tls13_traffic_keys(secret, suite)
    spec = CIPHER_SPECS[suite.cipher]
    salt, explicit = iv[: spec.salt_size], iv[spec.salt_size :]
    return CryptoInfo.create(
        TLS_1_3_VERSION, suite.cipher, key=key, iv=explicit, salt=salt, seq=_rec_seq(seq)
    )


# --- TLS 1.2 -------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Tls12Keys:
    """The AEAD part of a TLS 1.2 key block (RFC 5246 section 6.3).

    AEAD suites have no MAC keys (their length is 0), so only the write keys
    and the write IVs remain.  The IVs are the 4-byte implicit part for
    AES-GCM/CCM (RFC 5288 section 3, RFC 6655 section 3) and the full 12
    bytes for ChaCha20-Poly1305 (RFC 7905 section 2).
    """

    client_write_key: bytes
    server_write_key: bytes
    client_write_iv: bytes
    server_write_iv: bytes

    def __repr__(self) -> str:
        return (
            f"Tls12Keys(key_length={len(self.client_write_key)}, "
            f"iv_length={len(self.client_write_iv)}, <redacted>)"
        )

    def write_key(self, side: Side) -> bytes:
        """The key ``side`` encrypts with (and its peer decrypts with)."""
        return self.client_write_key if _side(side) == "client" else self.server_write_key

    def write_iv(self, side: Side) -> bytes:
        """The fixed IV ``side`` encrypts with."""
        return self.client_write_iv if _side(side) == "client" else self.server_write_iv


def _side(side: str) -> Side:
    if side == "client":
        return "client"
    if side == "server":
        return "server"
    raise ValueError(f"side must be 'client' or 'server', got {side!r}")


def tls12_key_block(
    master_secret: bytes, client_random: bytes, server_random: bytes, suite: Suite
) -> Tls12Keys:
    """Expand a TLS 1.2 master secret into the write keys and IVs.

    ``key_block = PRF(master_secret, "key expansion", server_random +
    client_random)`` (note the order: server random first, unlike the master
    secret derivation), carved into client/server MAC keys (empty for AEAD),
    client/server keys, then client/server IVs.  Extended master secret
    (RFC 7627) changes how the master secret is made, not this step.
    """
    _require_version(suite, TLS_1_2_VERSION)
    if len(master_secret) != 48:
        raise ValueError(f"TLS 1.2 master secret must be 48 bytes, got {len(master_secret)}")
    for name, value in (("client_random", client_random), ("server_random", server_random)):
        if len(value) != 32:
            raise ValueError(f"{name} must be 32 bytes, got {len(value)}")
    k, i = suite.key_length, suite.iv_length
    block = tls12_prf(
        master_secret, b"key expansion", server_random + client_random, 2 * (k + i), suite.hash_name
    )
    return Tls12Keys(
        client_write_key=block[:k],
        server_write_key=block[k : 2 * k],
        client_write_iv=block[2 * k : 2 * k + i],
        server_write_iv=block[2 * k + i :],
    )


def crypto_info_tls12(
    keys: Tls12Keys,
    suite: Suite,
    side: Side,
    seq: int,
    explicit_nonce: bytes | None = None,
) -> CryptoInfo:
    """The ``crypto_info`` for ``side``'s write direction of a TLS 1.2 session.

    ``side`` names whose *write* keys to use: a client installs
    ``side="client"`` as TLS_TX and ``side="server"`` as TLS_RX.

    AES-GCM/CCM: ``salt`` is the 4-byte fixed IV and ``iv`` the 8-byte
    explicit nonce of the *next* record the sender emits.  Linux writes that
    ``iv`` into the first record it sends and increments it per record (on
    RX the field is ignored: nonces are read from the records).  OpenSSL
    hands over its own running counter (which starts at a random value);
    without one, the sequence number is used, as RFC 5288 section 3 allows:
    it is unique per key by construction.  ChaCha20-Poly1305: ``iv`` is the
    whole 12-byte IV, no salt, no explicit nonce (RFC 7905).  ``rec_seq``
    is ``seq``: the first application record after the handshake has
    ``seq`` 1, the Finished message having used 0.
    """
    _require_version(suite, TLS_1_2_VERSION)
    seq = _rec_seq(seq)
    key, fixed_iv = keys.write_key(side), keys.write_iv(side)
    if len(key) != suite.key_length or len(fixed_iv) != suite.iv_length:
        raise ValueError(f"key block does not match {suite.openssl_name} key/IV sizes")
    spec = CIPHER_SPECS[suite.cipher]
    if suite.cipher == CipherType.CHACHA20_POLY1305:
        if explicit_nonce is not None:
            raise ValueError("ChaCha20-Poly1305 records carry no explicit nonce (RFC 7905)")
        iv, salt = fixed_iv, b""
    else:
        if explicit_nonce is None:
            explicit_nonce = seq.to_bytes(_EXPLICIT_NONCE, "big")
        if len(explicit_nonce) != spec.iv_size:
            raise ValueError(f"explicit nonce must be {spec.iv_size} bytes")
        iv, salt = bytes(explicit_nonce), fixed_iv
    return CryptoInfo.create(TLS_1_2_VERSION, suite.cipher, key=key, iv=iv, salt=salt, seq=seq)
