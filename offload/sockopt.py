"""The SOL_TLS option and message codec: net/tls's checks, without a socket.

Pure functions from the bytes a caller hands ``setsockopt``/``getsockopt``/
``sendmsg``/``recvmsg`` to the values the record layer acts on, raising the
errno Linux raises, in Linux's order:

* :func:`decode_crypto_info` is ``do_tls_setsockopt_conf``'s checks (short
  optlen, TLS 1.2 already set, version/cipher/length, a rekey keeping the
  version and cipher, TX and RX agreeing);
* :func:`encode_crypto_info` is ``do_tls_getsockopt_conf`` (EINVAL for a
  short or odd buffer, EBUSY before the direction is set);
* the int options (``TLS_TX_ZEROCOPY_RO``, ``TLS_RX_EXPECT_NO_PAD``) and
  the u16 ``TLS_TX_MAX_PAYLOAD_LEN`` (Linux 6.19+);
* :func:`decode_send` is ``tls_sw_sendmsg``'s flag check and
  ``tls_process_cmsg`` (plus this package's MSG_OOB form of a control
  record, which upstream answers with EOPNOTSUPP);
* :func:`check_recv_flags` is ``tls_sw_recvmsg``'s.

Nothing here holds state: the caller passes what is installed, so every
errno rule is testable with bytes alone.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

from offload.errors import os_error
from offload.record import Buffer
from offload.uapi import (
    SOL_TLS,
    TLS_1_3_VERSION,
    TLS_MAX_PAYLOAD_SIZE,
    TLS_MIN_RECORD_SIZE_LIM,
    TLS_SET_RECORD_TYPE,
    ContentType,
    CryptoInfo,
)

DATA = int(ContentType.APPLICATION_DATA)

SEND_FLAGS = (
    socket.MSG_MORE | socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL | socket.MSG_EOR | socket.MSG_OOB
)
"""Flags ``tls_sw_sendmsg`` accepts (MSG_OOB only in this package's RFC mode)."""

RECV_FLAGS = socket.MSG_DONTWAIT | socket.MSG_PEEK | socket.MSG_WAITALL | socket.MSG_NOSIGNAL
"""Flags the receive path implements; others are EOPNOTSUPP."""

CRYPTO_INFO_HEADER = 4
"""``struct tls_crypto_info``: u16 version, u16 cipher_type."""


def optval_bytes(value: int | Buffer | None, optlen: int | None) -> bytes:
    """What ``setsockopt`` copies from user memory: an int as 4 bytes, a
    buffer cut to ``optlen``, or ``optlen`` zero bytes for a NULL value."""
    if value is None:
        return bytes(optlen or 0)
    if isinstance(value, int):
        return value.to_bytes(4, "little", signed=value < 0)
    data = bytes(value)
    return data if optlen is None else data[:optlen]


def decode_crypto_info(
    data: bytes, current: CryptoInfo | None, other: CryptoInfo | None
) -> CryptoInfo:
    """``setsockopt(SOL_TLS, TLS_TX | TLS_RX)``: the crypto_info to install.

    ``current`` is this direction's installed key (a second call is a rekey),
    ``other`` the opposite direction's.  The order is Linux's: optlen < 4,
    then a TLS 1.2 key already set (EBUSY: 1.2 cannot rekey), then the
    struct (version, cipher, exact size: ``CryptoInfo.unpack``), then a
    rekey changing version or cipher, then TX and RX disagreeing (all
    EINVAL).  :func:`counts_rekey_error` says which failures Linux counts.
    """
    if len(data) < CRYPTO_INFO_HEADER:
        raise os_error(errno.EINVAL, "optlen shorter than struct tls_crypto_info")
    if current is not None and current.version != TLS_1_3_VERSION:
        raise os_error(errno.EBUSY, "TLS 1.2 keys cannot be changed")
    info = CryptoInfo.unpack(data)
    if current is not None and (current.version != info.version or current.cipher != info.cipher):
        raise os_error(errno.EINVAL, "a rekey must keep the version and cipher")
    if other is not None and (other.version != info.version or other.cipher != info.cipher):
        raise os_error(errno.EINVAL, "TX and RX must use the same version and cipher")
    return info


def counts_rekey_error(data: bytes, update: bool) -> bool:
    """Whether a failed :func:`decode_crypto_info` counts in
    ``Tls{Tx,Rx}RekeyError``: every failure of an update past the optlen
    check (Linux's ``err_crypto_info`` path and the TLS 1.2 EBUSY)."""
    return update and len(data) >= CRYPTO_INFO_HEADER


def encode_crypto_info(live: CryptoInfo | None, buflen: int) -> bytes:
    """``getsockopt(SOL_TLS, TLS_TX | TLS_RX)``: 4 bytes (version and
    cipher) or the whole struct with the live iv and rec_seq.

    EINVAL for a buffer shorter than 4, EBUSY before the direction is set,
    EINVAL for any length but 4 and the struct's.
    """
    if buflen < CRYPTO_INFO_HEADER:
        raise os_error(errno.EINVAL, "buffer shorter than struct tls_crypto_info")
    if live is None:
        raise os_error(errno.EBUSY, "crypto info not set for this direction")
    packed = live.pack()
    if buflen == CRYPTO_INFO_HEADER:
        return packed[:CRYPTO_INFO_HEADER]
    if buflen != len(packed):
        raise os_error(errno.EINVAL, f"buffer must be 4 or {len(packed)} bytes")
    return packed


def encode_int(value: int, buflen: int) -> bytes:
    """An int option read back (EINVAL for a buffer shorter than an int)."""
    if buflen < 4:
        raise os_error(errno.EINVAL, "buffer shorter than an int")
    return value.to_bytes(4, "little")


def as_getsockopt_result(raw: bytes, buflen: int | None) -> int | bytes:
    """As ``socket.getsockopt``: no ``buflen`` means an int."""
    if buflen is None:
        return int.from_bytes(raw[:4], "little")
    return raw


def decode_zerocopy_ro(data: bytes) -> int:
    """``TLS_TX_ZEROCOPY_RO``: exactly an int, 0 or 1."""
    if len(data) != 4:
        raise os_error(errno.EINVAL, "option takes an int")
    val = int.from_bytes(data, "little")
    if val > 1:
        raise os_error(errno.EINVAL, "option takes 0 or 1")
    return val


def decode_no_pad(data: bytes, version: int | None, rx_set: bool) -> bool:
    """``TLS_RX_EXPECT_NO_PAD``: TLS 1.3 only, an int 0 or 1 (extra bytes
    zero), and TLS_RX installed; EINVAL otherwise."""
    if version != TLS_1_3_VERSION or len(data) < 4:
        raise os_error(errno.EINVAL, "TLS_RX_EXPECT_NO_PAD needs TLS 1.3 and an int")
    val = int.from_bytes(data[:4], "little")
    if val > 1 or any(data[4:]):
        raise os_error(errno.EINVAL, "TLS_RX_EXPECT_NO_PAD takes 0 or 1")
    if not rx_set:
        raise os_error(errno.EINVAL, "TLS_RX not configured")
    return bool(val)


def check_no_pad_get(version: int | None) -> None:
    """Reading ``TLS_RX_EXPECT_NO_PAD`` on anything but TLS 1.3: EINVAL."""
    if version != TLS_1_3_VERSION:
        raise os_error(errno.EINVAL, "TLS_RX_EXPECT_NO_PAD needs TLS 1.3")


def decode_max_payload(data: bytes, version: int | None) -> int:
    """``TLS_TX_MAX_PAYLOAD_LEN`` (Linux 6.19+): exactly a u16 (EINVAL
    otherwise, an int too), 64..16384 plaintext bytes per record, 63.. for
    TLS 1.3 (EINVAL).  ``version`` is the connection's, from whichever
    direction was configured first (``prot_info.version``); before any key
    the TLS 1.2 bound applies.  Checked against Linux 7.3 in the VM oracle.
    """
    if len(data) != 2:
        raise os_error(errno.EINVAL, "TLS_TX_MAX_PAYLOAD_LEN takes a u16")
    val = int.from_bytes(data, "little")
    least = TLS_MIN_RECORD_SIZE_LIM - (1 if version == TLS_1_3_VERSION else 0)
    if not least <= val <= TLS_MAX_PAYLOAD_SIZE:
        raise os_error(errno.EINVAL, f"TLS_TX_MAX_PAYLOAD_LEN must be {least}..16384")
    return val


def encode_u16(value: int, buflen: int) -> bytes:
    """A u16 option read back: two bytes whatever the buffer's size beyond
    that (Linux sets optlen to 2), EINVAL for a buffer shorter than that."""
    if buflen < 2:
        raise os_error(errno.EINVAL, "buffer shorter than a u16")
    return value.to_bytes(2, "little")


def unknown_option(optname: int) -> OSError:
    return os_error(errno.ENOPROTOOPT, f"unknown SOL_TLS option {optname}")


def decode_send(
    data: memoryview,
    ancdata: Iterable[tuple[int, int, Buffer]],
    flags: int,
    oob_records: bool,
) -> tuple[int, memoryview, int]:
    """A ``sendmsg`` on a TLS socket: (record type, payload, prefix bytes).

    EOPNOTSUPP for flags a TLS socket refuses (MSG_OOB too unless
    ``oob_records``); a SOL_TLS cmsg must be TLS_SET_RECORD_TYPE with a byte
    (EINVAL) and cannot come with MSG_MORE (EINVAL).  With MSG_OOB (the 2017
    offload RFC) the first data byte is the record type: ``prefix`` is 1,
    the byte the call reports as sent without it being payload.
    """
    if flags & ~SEND_FLAGS or (flags & socket.MSG_OOB and not oob_records):
        raise os_error(errno.EOPNOTSUPP, "unsupported flags for a TLS socket")
    more = bool(flags & socket.MSG_MORE)
    record_type = DATA
    for level, ctype, cdata in ancdata:
        if level != SOL_TLS:
            continue
        if ctype != TLS_SET_RECORD_TYPE or len(memoryview(cdata)) < 1:
            raise os_error(errno.EINVAL, "bad SOL_TLS cmsg")
        if more:
            raise os_error(errno.EINVAL, "MSG_MORE with a control record")
        record_type = memoryview(cdata).cast("B")[0]
    if not flags & socket.MSG_OOB:
        return record_type, data, 0
    if more:
        raise os_error(errno.EINVAL, "MSG_MORE with a control record")
    if len(data) < 1:
        raise os_error(errno.EINVAL, "MSG_OOB needs the record type as first byte")
    return data[0], data[1:], 1


def oob_as_cmsg(data: memoryview, flags: int) -> tuple[memoryview, list[tuple[int, int, bytes]]]:
    """The RFC's MSG_OOB form for a real kTLS socket: the type byte as a
    TLS_SET_RECORD_TYPE cmsg (EINVAL without it, or with MSG_MORE)."""
    if len(data) < 1 or flags & socket.MSG_MORE:
        raise os_error(errno.EINVAL, "MSG_OOB needs the record type as first byte")
    return data[1:], [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes(data[:1]))]


def check_recv_flags(flags: int) -> None:
    if flags & ~RECV_FLAGS:
        raise os_error(errno.EOPNOTSUPP, "unsupported recv flags for a TLS socket")


__all__ = [
    "DATA",
    "RECV_FLAGS",
    "SEND_FLAGS",
    "as_getsockopt_result",
    "check_no_pad_get",
    "check_recv_flags",
    "counts_rekey_error",
    "decode_crypto_info",
    "decode_max_payload",
    "decode_no_pad",
    "decode_send",
    "decode_zerocopy_ro",
    "encode_crypto_info",
    "encode_int",
    "encode_u16",
    "oob_as_cmsg",
    "optval_bytes",
    "unknown_option",
]
