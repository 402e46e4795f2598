"""The kTLS socket: Linux's TLS socket-option API on a connected TCP socket.

:class:`KTLSSocket` wraps a ``socket.socket`` and offers the methods people
use on one (``send``, ``sendmsg``, ``recvmsg``, ``sendfile`` ...) with the
behaviour of a socket that has the ``tls`` ULP attached:

* ``setsockopt(SOL_TCP, TCP_ULP, b"tls")`` attaches the layer (ENOTCONN on a
  socket that is not connected, EEXIST the second time) and picks the
  backend once, as Linux's ``update_sk_prot`` picks the proto ops: the
  host's kTLS (``offload.kernel.KernelOps``) or the record layer in this
  process (``offload.sw_ops.SwOps``);
* ``setsockopt(SOL_TLS, TLS_TX | TLS_RX, crypto_info)`` installs keys, with
  the errno table of ``do_tls_setsockopt_conf`` (``offload.sockopt``);
  ``getsockopt`` reads the live state back;
* before a direction is configured its bytes pass through in the clear, as
  with the kernel's TLS_BASE configuration (the handshake runs there);
* control records go out through a ``TLS_SET_RECORD_TYPE`` cmsg (upstream)
  or, as in the 2017 offload RFC, ``MSG_OOB`` with the record type as the
  first byte of the data (upstream Linux answers MSG_OOB with EOPNOTSUPP;
  pass ``oob_records=False`` for that behaviour);
* ``recvmsg`` never mixes record types and reports the type in a
  ``TLS_GET_RECORD_TYPE`` cmsg; a control record read without room for the
  cmsg fails with EIO and stays queued.

This module is the public face only: the socket surface, the ULP, and the
state snapshot (:meth:`KTLSSocket.state`, :meth:`KTLSSocket.describe`).
A simulated NIC comes in as a TX path (``txpath=``, ``offload.txpath``),
built by the caller - the socket never imports the test bench.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from typing import Any, Literal, TypeAlias

from offload.errors import os_error
from offload.kernel import KernelOps
from offload.ops import AncData, TlsOps
from offload.record import Buffer
from offload.state import CryptoState, DeviceState, RxState, SocketState, TlsConf
from offload.stats import GLOBAL, TlsStats
from offload.sw_ops import SwOps
from offload.tls_device_rx import RxPath
from offload.txpath import TxPath
from offload.uapi import (
    SOL_TCP,
    SOL_TLS,
    TCP_ULP,
    TLS_MAX_PAYLOAD_SIZE,
    ContentType,
)

Backend: TypeAlias = Literal["auto", "sw", "kernel"]
BACKENDS: tuple[Backend, ...] = ("auto", "sw", "kernel")

_DATA = int(ContentType.APPLICATION_DATA)


class KTLSSocket:
    """A connected TCP socket with the Linux kTLS socket API.

    ``backend``: ``"sw"`` does the record layer in this process,
    ``"kernel"`` forwards to the host's kTLS (clear error if it has none),
    ``"auto"`` uses the kernel where the ``tls`` ULP attaches, else sw.
    ``txpath``: where TX records go on their way to TCP - a simulated NIC
    (``offload.wiremodel.TxPipeline``) that TLS_TX offers the context to
    (software backend only); without it records go straight to the socket.
    ``record_size``: the largest plaintext per TX record (software backend;
    Linux 6.x has no equivalent before TLS_TX_MAX_PAYLOAD_LEN).
    ``rxpath``: where received bytes go before the record layer - a
    simulated NIC that TLS_RX offers the context to
    (``offload.rxwire.RxWire``, software backend only).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        backend: Backend = "auto",
        oob_records: bool = True,
        txpath: TxPath | None = None,
        record_size: int = TLS_MAX_PAYLOAD_SIZE,
        rxpath: RxPath | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}")
        if not 1 <= record_size <= TLS_MAX_PAYLOAD_SIZE:
            raise ValueError("record_size must be 1..16384 bytes of plaintext")
        if (txpath is not None or rxpath is not None) and backend == "kernel":
            raise ValueError("a simulated device needs the sw backend")
        self.record_size = record_size
        self.oob_records = oob_records
        self.stats = TlsStats(parent=GLOBAL)
        self._sock = sock
        self._requested: Backend = backend
        self._closed = False
        # Until the ULP attaches: the sw ops with no key, bytes in the clear.
        self._ops: TlsOps = SwOps(
            sock,
            self.stats,
            path=txpath,
            record_size=record_size,
            oob_records=oob_records,
            rxpath=rxpath,
        )
        self.backend: Literal["sw", "kernel"] | None = None

    # -- plain socket surface -------------------------------------------

    @property
    def sock(self) -> socket.socket:
        """The wrapped TCP socket (for the kernel backend, the kTLS socket)."""
        return self._sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def getpeername(self) -> Any:
        return self._sock.getpeername()

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def settimeout(self, value: float | None) -> None:
        self._sock.settimeout(value)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def getblocking(self) -> bool:
        return self._sock.getblocking()

    @property
    def family(self) -> int:
        return self._sock.family

    @property
    def type(self) -> int:
        return self._sock.type

    def __enter__(self) -> KTLSSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<KTLSSocket fd={self._sock.fileno()} backend={self.backend} "
            f"tx={self.tx_conf} rx={self.rx_conf}>"
        )

    # -- state ------------------------------------------------------------

    @property
    def tx_conf(self) -> TlsConf:
        """BASE (``none``), SW, DEVICE or KERNEL (Linux: TLS_INFO_TXCONF)."""
        return self._ops.tx_conf

    @property
    def rx_conf(self) -> TlsConf:
        return self._ops.rx_conf

    @property
    def rx_state(self) -> RxState:
        return self._ops.rx_state

    @property
    def offload_refused(self) -> str:
        """Why the device declined TLS_TX (empty if it did not)."""
        return self._ops.offload_refused

    @property
    def bytes_sent(self) -> int:
        return self._ops.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self._ops.bytes_received

    @property
    def pending_tx_bytes(self) -> int:
        """Sealed bytes not yet accepted by the TCP socket."""
        return self._ops.pending_tx_bytes

    @property
    def rx_truncated(self) -> bool:
        """True when the peer closed in the middle of a record."""
        return self._ops.rx_truncated

    @property
    def device_seconds(self) -> float:
        """CPU time spent inside the NIC driver (what hardware would do)."""
        return self._ops.device_seconds()

    def device_state(self) -> DeviceState | None:
        """The device TX context and its NIC's counters and faults (TX conf
        DEVICE only): what ``ethtool -S`` would show for this connection."""
        return self._ops.device_state()

    def rx_device_report(self) -> dict[str, int | str] | None:
        """What the RX device context did (RX conf DEVICE only): its resync
        scheme, records taken decrypted / repaired / decrypted in software,
        bytes re-encrypted (the NIC's own counters are in ``device_state``)."""
        return self._ops.rx_device_report()

    def state(self, show_secrets: bool = False) -> SocketState:
        """The live state, as ``ss -i`` / tls_stat / ``ethtool -S`` would
        show it.  Keys and IVs are left out unless ``show_secrets``."""
        try:
            host, port = self._sock.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = ""
        tx, rx = (self._ops.live_info(d) for d in (True, False))
        return SocketState(
            fd=self._sock.fileno(),
            peer=peer,
            backend=self.backend,
            tx_conf=self.tx_conf,
            rx_conf=self.rx_conf,
            rx_state=self.rx_state,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            pending_tx_bytes=self.pending_tx_bytes,
            stats=self.stats.snapshot(),
            tx=None if tx is None else CryptoState.of(tx, show_secrets),
            rx=None if rx is None else CryptoState.of(rx, show_secrets),
            device=self.device_state(),
            offload_refused=self.offload_refused,
            rx_offload=self.rx_device_report(),
        )

    def describe(self, show_secrets: bool = False) -> dict[str, Any]:
        """:meth:`state` as JSON-ready data (tlsctl's control socket).

        Keys and IVs are redacted unless ``show_secrets``; the sequence
        numbers are integers (``tx_rec_seq``/``rx_rec_seq``).
        """
        return self.state(show_secrets).to_json()

    # -- socket options --------------------------------------------------

    def setsockopt(
        self, level: int, optname: int, value: int | Buffer | None, optlen: int | None = None
    ) -> None:
        """``setsockopt`` with the TCP_ULP and SOL_TLS semantics of Linux."""
        if level == SOL_TCP and optname == TCP_ULP:
            self._attach_ulp(value)
            return
        if level != SOL_TLS:
            if value is None:
                self._sock.setsockopt(level, optname, None, optlen or 0)
            else:
                self._sock.setsockopt(level, optname, value)
            return
        if self.backend is None:
            raise os_error(errno.ENOPROTOOPT, "SOL_TLS without the tls ULP")
        self._ops.setsockopt(optname, value, optlen)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int | bytes:
        """``getsockopt``; SOL_TLS TLS_TX/TLS_RX return the live crypto_info.

        As with ``socket.getsockopt``, no ``buflen`` means an int-sized read
        returned as an int (for TLS_TX that is version and cipher).
        """
        if level != SOL_TLS:
            if buflen is None:
                return self._sock.getsockopt(level, optname)
            return self._sock.getsockopt(level, optname, buflen)
        if self.backend is None:
            # TCP answers getsockopt at an unknown level with EOPNOTSUPP.
            raise os_error(errno.EOPNOTSUPP, "SOL_TLS without the tls ULP")
        return self._ops.getsockopt(optname, buflen)

    def _attach_ulp(self, value: int | Buffer | None) -> None:
        """``TCP_ULP "tls"``: the backend is chosen here, once."""
        name = value if isinstance(value, (bytes, bytearray, memoryview)) else b""
        name = bytes(name).rstrip(b"\0")
        if self.backend is not None:
            raise os_error(errno.EEXIST, "a ULP is already attached")
        if name != b"tls":
            raise os_error(errno.ENOENT, f"unknown ULP {name!r}")
        if self._requested in ("auto", "kernel"):
            try:
                self._sock.setsockopt(SOL_TCP, TCP_ULP, b"tls")
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                if self._requested == "kernel":
                    raise os_error(
                        errno.ENOENT, "this kernel has no kTLS (the tls module is not available)"
                    ) from None
            else:
                self._ops = KernelOps(self._sock, self.oob_records)
                self.backend = "kernel"
                return
        try:
            self._sock.getpeername()
        except OSError:
            raise os_error(errno.ENOTCONN, "socket is not connected") from None
        self.backend = "sw"

    # -- transmit ---------------------------------------------------------

    def send(self, data: Buffer, flags: int = 0) -> int:
        return self.sendmsg([data], (), flags)

    def sendall(self, data: Buffer, flags: int = 0) -> None:
        mv = memoryview(data)
        total = len(mv)
        sent = 0
        while True:
            sent += self.send(mv[sent:], flags)
            if sent >= total:
                return

    def sendmsg(
        self,
        buffers: Iterable[Buffer],
        ancdata: Iterable[tuple[int, int, Buffer]] = (),
        flags: int = 0,
        address: Any = None,
    ) -> int:
        """Send one message; returns the plaintext bytes accepted.

        One record per call (split at 2^14) unless MSG_MORE; a record type
        from a TLS_SET_RECORD_TYPE cmsg or, with MSG_OOB, the first data byte.
        """
        bufs = [memoryview(b).cast("B") for b in buffers]
        return self._ops.sendmsg(bufs, list(ancdata), flags)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send a file's bytes as data records; returns the bytes sent.

        Like ``socket.sendfile``: reads from ``offset`` (``count`` bytes or
        to EOF) and leaves the file position after the last byte sent.  The
        sw backend reads each chunk straight into the record buffer
        (``os.preadv`` into the plaintext slots) and seals it in place, so
        file data is copied once, by the AEAD.  The kernel backend uses
        ``os.sendfile`` on the kTLS socket.
        """
        return self._ops.sendfile(file, offset, count)

    def flush(self, timeout: float | None = None) -> bool:
        """Push queued ciphertext to the socket; True when nothing is left."""
        return self._ops.flush(timeout)

    # -- receive ------------------------------------------------------------

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data, _anc, _flags, _addr = self.recvmsg(bufsize, 0, flags)
        return data

    def recv_into(self, buffer: Buffer, nbytes: int = 0, flags: int = 0) -> int:
        n, _anc, _flags, _addr = self.recvmsg_into([buffer], 0, flags, nbytes)
        return n

    def recvmsg(
        self, bufsize: int, ancbufsize: int = 0, flags: int = 0
    ) -> tuple[bytes, AncData, int, Any]:
        """Receive from one record type; the type in a TLS_GET_RECORD_TYPE cmsg.

        Data records are concatenated up to ``bufsize`` (without blocking for
        more once something was read); a control record is returned alone.
        A control record with no room for the cmsg: EIO, record kept.
        """
        return self._ops.recvmsg(bufsize, ancbufsize, flags)

    def recvmsg_into(
        self, buffers: Iterable[Buffer], ancbufsize: int = 0, flags: int = 0, nbytes: int = 0
    ) -> tuple[int, AncData, int, Any]:
        """``recvmsg`` into the caller's buffers (``socket.recvmsg_into``).

        ``nbytes`` (not in ``socket``'s signature) limits the read like
        ``recv_into``'s.
        """
        views = [memoryview(b).cast("B") for b in buffers]
        if nbytes:
            views = _limit(views, nbytes)
        return self._ops.recvmsg_into(views, ancbufsize, flags)

    def inject_rx_plaintext(self, data: Buffer, content_type: int = _DATA) -> None:
        """Queue plaintext the handshake library already decrypted.

        Delivered before anything else, as a record of ``content_type``; so
        application data OpenSSL read during the handshake is never lost.
        """
        self._ops.inject_rx_plaintext(data, content_type)

    def inject_rx(self, ciphertext: Buffer) -> None:
        """Queue bytes that were read from the socket before TLS_RX was set.

        The handshake may read past its last record; those bytes belong to
        the record layer and must not be lost (sw backend only).
        """
        self._ops.inject_rx(ciphertext)

    # -- teardown -------------------------------------------------------------

    def shutdown(self, how: int) -> None:
        self._ops.shutdown(how)

    def close(self) -> None:
        """Push what is queued (bounded wait), then close; counters drop."""
        if self._closed:
            return
        self._closed = True
        self._ops.close()


def _limit(views: list[memoryview], nbytes: int) -> list[memoryview]:
    """The first ``nbytes`` of a scatter list (``recv_into``'s nbytes)."""
    out = []
    for v in views:
        if nbytes <= 0:
            break
        out.append(v[:nbytes])
        nbytes -= len(out[-1])
    return out


__all__ = ["BACKENDS", "TLS_MAX_PAYLOAD_SIZE", "Backend", "KTLSSocket"]
