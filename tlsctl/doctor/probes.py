"""Questions only the kernel can answer, asked on loopback TCP pairs.

Each probe attaches the ``tls`` ULP to a fresh connected pair, installs a
dummy key (all-zero bytes: the kernel does not judge keys, and nothing
secret is involved) and reports what the kernel said: the errno of a
refusal, or, when it accepted, whether a record really went through (the
bytes read back equal the bytes sent).  Nothing leaves the host.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from offload.loopback import attach_tls_ulp, loopback_pair
from offload.uapi import (
    CIPHER_SPECS,
    SOL_TLS,
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_RX,
    TLS_RX_EXPECT_NO_PAD,
    TLS_SET_RECORD_TYPE,
    TLS_TX,
    TLS_TX_MAX_PAYLOAD_LEN,
    TLS_TX_ZEROCOPY_RO,
    CipherType,
    ContentType,
    CryptoInfo,
)

# TLS 1.3 KeyUpdate(update_not_requested): handshake type 24, length 1, 0.
_HANDSHAKE_KEY_UPDATE = 24
_KEY_UPDATE = bytes([_HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0])
_U16 = struct.Struct("=H")
_INT = struct.Struct("=i")
_PAYLOAD = b"tlsctl doctor probe"


def dummy_info(version: int, cipher: CipherType, fill: int = 0) -> CryptoInfo:
    """A crypto_info of the right sizes whose key, iv and salt are ``fill``."""
    s = CIPHER_SPECS[cipher]
    return CryptoInfo.create(
        version,
        cipher,
        key=bytes([fill]) * s.key_size,
        iv=bytes([fill]) * s.iv_size,
        salt=bytes([fill]) * s.salt_size,
    )


def _keys_then_record(
    c: socket.socket, s: socket.socket, info: bytes
) -> tuple[OSError | None, OSError | None, bool]:
    """``setsockopt(TLS_TX)`` on ``c`` and ``setsockopt(TLS_RX)`` on ``s``
    with ``info``, each error kept apart; with both keys taken, whether a
    record sent on ``c`` opens on ``s``.  A send/receive failure raises."""
    tx_error: OSError | None = None
    rx_error: OSError | None = None
    try:
        c.setsockopt(SOL_TLS, TLS_TX, info)
    except OSError as exc:
        tx_error = exc
    try:
        s.setsockopt(SOL_TLS, TLS_RX, info)
    except OSError as exc:
        rx_error = exc
    if tx_error is not None or rx_error is not None:
        return tx_error, rx_error, False
    c.sendall(_PAYLOAD)
    return None, None, _recv_exact(s, len(_PAYLOAD)) == _PAYLOAD


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


@dataclass(frozen=True)
class UlpResult:
    """``setsockopt(TCP_ULP, "tls")`` on an established loopback socket."""

    error: OSError | None


def probe_ulp() -> UlpResult:
    with loopback_pair() as (c, _):
        try:
            attach_tls_ulp(c)
        except OSError as exc:
            return UlpResult(exc)
    return UlpResult(None)


@dataclass(frozen=True)
class CipherResult:
    """One version x cipher: did the kernel take the TX key, the RX key, and
    did a record sealed by kernel TX open in kernel RX?"""

    version: int
    cipher: CipherType
    tx_error: OSError | None
    rx_error: OSError | None
    roundtrip: bool

    @property
    def ok(self) -> bool:
        return self.tx_error is None and self.rx_error is None and self.roundtrip


def probe_cipher(version: int, cipher: CipherType) -> CipherResult:
    """A failure outside the two setsockopts (the pair, the ULP, the record's
    send or receive) is reported as the TX error."""
    info = dummy_info(version, cipher).pack()
    tx_error: OSError | None = None
    rx_error: OSError | None = None
    roundtrip = False
    try:
        with loopback_pair() as (c, s):
            attach_tls_ulp(c)
            attach_tls_ulp(s)
            tx_error, rx_error, roundtrip = _keys_then_record(c, s, info)
    except OSError as exc:
        tx_error = tx_error or exc
    return CipherResult(version, cipher, tx_error, rx_error, roundtrip)


@dataclass(frozen=True)
class RekeyResult:
    """TLS 1.3 KeyUpdate through the kernel: data, the KeyUpdate handshake
    record, a second ``setsockopt(TLS_TX)`` with the next key; the receiver
    reads the KeyUpdate and installs the next key with a second
    ``setsockopt(TLS_RX)``; a record under the new key must then arrive.
    Linux before 6.14 refuses the second setsockopt with EBUSY."""

    tx_error: OSError | None
    rx_error: OSError | None
    roundtrip: bool
    setup_error: OSError | None = None
    """The first keys or the KeyUpdate record failed: no answer about rekey."""

    @property
    def ok(self) -> bool:
        return (
            self.setup_error is None
            and self.tx_error is None
            and self.rx_error is None
            and self.roundtrip
        )


def probe_rekey(cipher: CipherType = CipherType.AES_GCM_128) -> RekeyResult:
    first = dummy_info(TLS_1_3_VERSION, cipher, 0).pack()
    second = dummy_info(TLS_1_3_VERSION, cipher, 1).pack()
    tx_error: OSError | None = None
    rx_error: OSError | None = None
    roundtrip = False
    try:
        with loopback_pair() as (c, s):
            attach_tls_ulp(c)
            attach_tls_ulp(s)
            c.setsockopt(SOL_TLS, TLS_TX, first)
            s.setsockopt(SOL_TLS, TLS_RX, first)
            c.sendmsg(
                [_KEY_UPDATE], [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes([ContentType.HANDSHAKE]))]
            )
            data, _anc, _flags, _addr = s.recvmsg(64, socket.CMSG_SPACE(1))
            if data != _KEY_UPDATE:
                raise OSError(f"the KeyUpdate record came back as {data!r}")
            tx_error, rx_error, roundtrip = _keys_then_record(c, s, second)
    except OSError as exc:
        if tx_error is None and rx_error is None:
            return RekeyResult(None, None, False, setup_error=exc)
    return RekeyResult(tx_error, rx_error, roundtrip)


@dataclass(frozen=True)
class OptionResult:
    """A ``SOL_TLS`` option: set to ``wanted``, read back as ``value``."""

    name: str
    error: OSError | None
    value: int | None
    wanted: int
    default: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.value == self.wanted


def _option(
    name: str,
    optname: int,
    fmt: struct.Struct,
    wanted: int,
    setup: Callable[[socket.socket, socket.socket], socket.socket],
) -> OptionResult:
    default: int | None = None
    try:
        with loopback_pair() as (c, s):
            attach_tls_ulp(c)
            attach_tls_ulp(s)
            sock = setup(c, s)
            default = fmt.unpack(sock.getsockopt(SOL_TLS, optname, fmt.size))[0]
            sock.setsockopt(SOL_TLS, optname, fmt.pack(wanted))
            value = fmt.unpack(sock.getsockopt(SOL_TLS, optname, fmt.size))[0]
    except OSError as exc:
        return OptionResult(name, exc, None, wanted, default)
    return OptionResult(name, None, int(value), wanted, default)


def _tx12(c: socket.socket, _s: socket.socket) -> socket.socket:
    c.setsockopt(SOL_TLS, TLS_TX, dummy_info(TLS_1_2_VERSION, CipherType.AES_GCM_128).pack())
    return c


def _rx13(_c: socket.socket, s: socket.socket) -> socket.socket:
    s.setsockopt(SOL_TLS, TLS_RX, dummy_info(TLS_1_3_VERSION, CipherType.AES_GCM_128).pack())
    return s


def probe_options() -> list[OptionResult]:
    """TLS_TX_ZEROCOPY_RO (on a TX socket), TLS_RX_EXPECT_NO_PAD (needs TLS
    1.3 RX), TLS_TX_MAX_PAYLOAD_LEN (u16; set to 4096).  A kernel without the
    option answers ENOPROTOOPT."""
    return [
        _option("TLS_TX_ZEROCOPY_RO", TLS_TX_ZEROCOPY_RO, _INT, 1, _tx12),
        _option("TLS_RX_EXPECT_NO_PAD", TLS_RX_EXPECT_NO_PAD, _INT, 1, _rx13),
        _option("TLS_TX_MAX_PAYLOAD_LEN", TLS_TX_MAX_PAYLOAD_LEN, _U16, 4096, _tx12),
    ]
