"""The SOL_TLS codec alone: Linux's errno rules from bytes, no socket.

The same rules run through real sockets in test_ktls_socket.py and against
the real kernel in the VM oracle (kernel_layer_scenarios.py); here each rule
and the order of the checks are pinned down one by one.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

import pytest

from offload import sockopt
from offload.uapi import (
    SOL_TLS,
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_GET_RECORD_TYPE,
    TLS_SET_RECORD_TYPE,
    CipherType,
)
from tests.conftest import random_info


def _errno(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as e:
        fn()
    assert e.value.errno is not None
    return e.value.errno


def test_decode_crypto_info_checks_in_linux_order() -> None:
    info12 = random_info(TLS_1_2_VERSION, CipherType.AES_GCM_128)
    info13 = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128)
    dec = sockopt.decode_crypto_info
    # optlen < 4 comes first, even with a TLS 1.2 key set (EINVAL, not EBUSY).
    assert _errno(lambda: dec(b"\x03\x03\x33", info12, None)) == errno.EINVAL
    # A TLS 1.2 key set: EBUSY before the struct is even looked at.
    assert _errno(lambda: dec(b"\0" * 40, info12, None)) == errno.EBUSY
    bad_version = bytearray(info12.pack())
    bad_version[0:2] = (0x0302).to_bytes(2, "little")
    assert _errno(lambda: dec(bytes(bad_version), None, None)) == errno.EINVAL
    bad_cipher = bytearray(info12.pack())
    bad_cipher[2:4] = (50).to_bytes(2, "little")
    assert _errno(lambda: dec(bytes(bad_cipher), None, None)) == errno.EINVAL
    assert _errno(lambda: dec(info12.pack() + b"\0", None, None)) == errno.EINVAL
    assert _errno(lambda: dec(info12.pack()[:-1], None, None)) == errno.EINVAL
    # TLS 1.3: a second key is a rekey, same version and cipher only.
    new13 = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128)
    assert dec(new13.pack(), info13, None) == new13
    other_cipher = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_256)
    assert _errno(lambda: dec(other_cipher.pack(), info13, None)) == errno.EINVAL
    # TX and RX must agree.
    assert _errno(lambda: dec(info13.pack(), None, info12)) == errno.EINVAL
    assert dec(info12.pack(), None, info12) == info12


def test_rekey_errors_counted_as_linux_counts_them() -> None:
    """Tls{Tx,Rx}RekeyError: every failed update past the optlen check."""
    assert sockopt.counts_rekey_error(b"\0" * 40, update=True)
    assert not sockopt.counts_rekey_error(b"\0" * 3, update=True)
    assert not sockopt.counts_rekey_error(b"\0" * 40, update=False)


def test_encode_crypto_info() -> None:
    info = random_info(TLS_1_3_VERSION, CipherType.CHACHA20_POLY1305, seq=9)
    enc = sockopt.encode_crypto_info
    assert _errno(lambda: enc(info, 3)) == errno.EINVAL  # short, even when set
    assert _errno(lambda: enc(None, 3)) == errno.EINVAL
    assert _errno(lambda: enc(None, 56)) == errno.EBUSY
    assert enc(info, 4) == info.pack()[:4]
    assert enc(info, 56) == info.pack()
    assert _errno(lambda: enc(info, 40)) == errno.EINVAL
    assert sockopt.as_getsockopt_result(enc(info, 4), None) == int.from_bytes(
        info.pack()[:4], "little"
    )


def test_int_options() -> None:
    assert sockopt.decode_zerocopy_ro((1).to_bytes(4, "little")) == 1
    assert _errno(lambda: sockopt.decode_zerocopy_ro((2).to_bytes(4, "little"))) == errno.EINVAL
    assert _errno(lambda: sockopt.decode_zerocopy_ro(b"\1\0\0\0\0")) == errno.EINVAL
    one = sockopt.optval_bytes(1, None)
    assert one == b"\1\0\0\0"
    assert sockopt.decode_no_pad(one, TLS_1_3_VERSION, rx_set=True) is True
    assert _errno(lambda: sockopt.decode_no_pad(one, TLS_1_2_VERSION, True)) == errno.EINVAL
    assert _errno(lambda: sockopt.decode_no_pad(one, None, False)) == errno.EINVAL
    assert _errno(lambda: sockopt.decode_no_pad(one, TLS_1_3_VERSION, False)) == errno.EINVAL
    assert _errno(lambda: sockopt.decode_no_pad(one + b"\1", TLS_1_3_VERSION, True)) == errno.EINVAL
    assert _errno(lambda: sockopt.check_no_pad_get(TLS_1_2_VERSION)) == errno.EINVAL
    assert _errno(lambda: sockopt.encode_int(1, 3)) == errno.EINVAL
    assert sockopt.optval_bytes(None, 3) == bytes(3)
    assert sockopt.optval_bytes(b"abcdef", 4) == b"abcd"


def test_decode_send() -> None:
    data = memoryview(b"\x15\x01\x00")
    dec = sockopt.decode_send
    assert dec(data, [], 0, True) == (23, data, 0)
    rtype, payload, prefix = dec(data, [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x16")], 0, True)
    assert (rtype, bytes(payload), prefix) == (22, b"\x15\x01\x00", 0)
    rtype, payload, prefix = dec(data, [], socket.MSG_OOB, True)
    assert (rtype, bytes(payload), prefix) == (21, b"\x01\x00", 1)
    cmsg = [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x15")]
    assert _errno(lambda: dec(data, [], socket.MSG_OOB, False)) == errno.EOPNOTSUPP
    assert _errno(lambda: dec(data, [], socket.MSG_CONFIRM, True)) == errno.EOPNOTSUPP
    assert _errno(lambda: dec(data, cmsg, socket.MSG_MORE, True)) == errno.EINVAL
    assert _errno(lambda: dec(data, [(SOL_TLS, TLS_GET_RECORD_TYPE, b"\x15")], 0, True)) == (
        errno.EINVAL
    )
    assert _errno(lambda: dec(data, [(SOL_TLS, TLS_SET_RECORD_TYPE, b"")], 0, True)) == (
        errno.EINVAL
    )
    assert _errno(lambda: dec(memoryview(b""), [], socket.MSG_OOB, True)) == errno.EINVAL
    # Other levels' cmsgs are not ours to judge.
    assert dec(data, [(socket.SOL_SOCKET, 1, b"x")], 0, True)[0] == 23
    payload, cmsg_out = sockopt.oob_as_cmsg(data, 0)
    assert (bytes(payload), cmsg_out) == (b"\x01\x00", [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x15")])
    assert _errno(lambda: sockopt.oob_as_cmsg(data, socket.MSG_MORE)) == errno.EINVAL
    assert _errno(lambda: sockopt.check_recv_flags(socket.MSG_OOB)) == errno.EOPNOTSUPP
    sockopt.check_recv_flags(socket.MSG_PEEK | socket.MSG_WAITALL | socket.MSG_DONTWAIT)
