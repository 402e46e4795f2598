"""The host kernel's kTLS: the probe, and the pass-through backend.

With the kernel backend a :class:`~offload.ktls_socket.KTLSSocket` forwards
``setsockopt``/``getsockopt``/``sendmsg``/``recvmsg`` to the real socket and
``sendfile`` to ``os.sendfile`` (zero copy through the kernel):
:class:`KernelOps`.  :func:`kernel_has_ktls` answers the one question that
needs a probe: does this kernel have kTLS?  (:func:`kernel_has_max_payload`:
and ``TLS_TX_MAX_PAYLOAD_LEN``, for ``bench --record-size``.)
"""

from __future__ import annotations

import errno
import functools
import socket
from collections.abc import Sequence
from typing import Any, Literal

from offload.errors import os_error
from offload.loopback import attach_tls_ulp, loopback_pair
from offload.record import Buffer
from offload.sockopt import oob_as_cmsg
from offload.state import DeviceState, RxState, TlsConf
from offload.uapi import (
    SOL_TLS,
    TLS_MAX_PAYLOAD_SIZE,
    TLS_RX,
    TLS_TX,
    TLS_TX_MAX_PAYLOAD_LEN,
    CryptoInfo,
)


@functools.lru_cache(maxsize=1)
def kernel_has_ktls() -> tuple[bool, str]:
    """(True, "") when the ``tls`` ULP attaches here, else (False, reason).

    Probes with a loopback TCP pair, the only reliable test: the module may
    be built in, loadable on demand, or absent, and /proc/net/tls_stat only
    exists once it is loaded.  (``tlsctl doctor`` asks the longer questions
    with the same pair.)
    """
    try:
        with loopback_pair() as (c, _):
            try:
                attach_tls_ulp(c)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return False, "the kernel has no tls module (kTLS unavailable)"
                return False, f"the tls ULP does not attach: {exc.strerror}"
        return True, ""
    except OSError as exc:
        return False, f"cannot probe kTLS: {exc.strerror}"


@functools.lru_cache(maxsize=1)
def kernel_has_max_payload() -> tuple[bool, str]:
    """(True, "") when this kernel takes ``TLS_TX_MAX_PAYLOAD_LEN`` (Linux
    6.19+), else (False, reason): the option set on a loopback socket with
    the ULP attached, before any key, as the layer allows too."""
    ok, why = kernel_has_ktls()
    if not ok:
        return ok, why
    try:
        with loopback_pair() as (c, _):
            attach_tls_ulp(c)
            c.setsockopt(
                SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN, TLS_MAX_PAYLOAD_SIZE.to_bytes(2, "little")
            )
    except OSError as exc:
        if exc.errno == errno.ENOPROTOOPT:
            return False, "the kernel has no TLS_TX_MAX_PAYLOAD_LEN (Linux 6.19+)"
        return False, f"TLS_TX_MAX_PAYLOAD_LEN: {exc.strerror}"
    return True, ""


class KernelOps:
    """The host kernel's kTLS behind ``KTLSSocket``: every call goes to the
    real socket (TLS_CONF KERNEL once a key is set).

    The one thing added on top is the 2017 offload RFC's MSG_OOB form of a
    control record, turned into the TLS_SET_RECORD_TYPE cmsg the kernel
    takes (``oob_records``).
    """

    name: Literal["kernel"] = "kernel"

    def __init__(self, sock: socket.socket, oob_records: bool) -> None:
        self._sock = sock
        self._oob_records = oob_records
        self.tx_conf = TlsConf.BASE
        self.rx_conf = TlsConf.BASE
        self.bytes_sent = 0
        self.bytes_received = 0
        self.pending_tx_bytes = 0
        self.offload_refused = ""
        self.rx_truncated = False
        self.rx_state = RxState.OK

    def setsockopt(self, optname: int, value: int | Buffer | None, optlen: int | None) -> None:
        if value is None:
            self._sock.setsockopt(SOL_TLS, optname, None, optlen or 0)
        else:
            self._sock.setsockopt(SOL_TLS, optname, value)
        if optname == TLS_TX:
            self.tx_conf = TlsConf.KERNEL
        elif optname == TLS_RX:
            self.rx_conf = TlsConf.KERNEL

    def getsockopt(self, optname: int, buflen: int | None) -> int | bytes:
        if buflen is None:
            return self._sock.getsockopt(SOL_TLS, optname)
        return self._sock.getsockopt(SOL_TLS, optname, buflen)

    def sendmsg(
        self, bufs: Sequence[memoryview], ancdata: Sequence[tuple[int, int, Buffer]], flags: int
    ) -> int:
        if self.tx_conf is TlsConf.KERNEL and flags & socket.MSG_OOB and self._oob_records:
            data, cmsg = oob_as_cmsg(memoryview(b"".join(bufs)), flags)
            return 1 + self._sock.sendmsg([data], cmsg, flags & ~socket.MSG_OOB)
        return self._sock.sendmsg(bufs, list(ancdata), flags)

    def sendfile(self, file: Any, offset: int, count: int | None) -> int:
        """``os.sendfile`` on the kTLS socket: zero copy through the kernel."""
        sent = self._sock.sendfile(file, offset, count)
        self.bytes_sent += sent
        return sent

    def recvmsg(
        self, bufsize: int, ancbufsize: int, flags: int
    ) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        return self._sock.recvmsg(bufsize, ancbufsize, flags)

    def recvmsg_into(
        self, views: list[memoryview], ancbufsize: int, flags: int
    ) -> tuple[int, list[tuple[int, int, bytes]], int, Any]:
        return self._sock.recvmsg_into(views, ancbufsize, flags)

    def flush(self, timeout: float | None) -> bool:
        return True

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self.tx_conf = self.rx_conf = TlsConf.BASE
        self._sock.close()

    def live_info(self, tx: bool) -> CryptoInfo | None:
        return None

    def device_state(self) -> DeviceState | None:
        return None

    def device_seconds(self) -> float:
        return 0.0

    def inject_rx(self, ciphertext: Buffer) -> None:
        raise os_error(errno.EBUSY, "TLS_RX not set")

    def inject_rx_plaintext(self, data: Buffer, content_type: int) -> None:
        raise os_error(errno.EBUSY, "TLS_RX not set")
