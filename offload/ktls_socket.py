"""The kTLS socket: Linux's TLS socket-option API on a connected TCP socket.

:class:`KTLSSocket` wraps a ``socket.socket`` and offers the methods people
use on one (``send``, ``sendmsg``, ``recvmsg``, ``sendfile`` ...) with the
behaviour of a socket that has the ``tls`` ULP attached:

* ``setsockopt(SOL_TCP, TCP_ULP, b"tls")`` attaches the layer (ENOTCONN on a
  socket that is not connected, EEXIST the second time);
* ``setsockopt(SOL_TLS, TLS_TX | TLS_RX, crypto_info)`` installs keys, with
  the errno table of ``do_tls_setsockopt_conf``; ``getsockopt`` reads the
  live state back;
* before a direction is configured its bytes pass through in the clear, as
  with the kernel's TLS_BASE configuration (the handshake runs there);
* control records go out through a ``TLS_SET_RECORD_TYPE`` cmsg (upstream)
  or, as in the 2017 offload RFC, ``MSG_OOB`` with the record type as the
  first byte of the data (upstream Linux answers MSG_OOB with EOPNOTSUPP;
  pass ``oob_records=False`` for that behaviour);
* ``recvmsg`` never mixes record types and reports the type in a
  ``TLS_GET_RECORD_TYPE`` cmsg; a control record read without room for the
  cmsg fails with EIO and stays queued.

The backend is the software record layer (``tls_sw``) or the host kernel's
kTLS (``offload.kernel``), chosen when the ULP is attached.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Literal, TypeAlias

from offload.errors import StreamAbort, os_error
from offload.netdev import NetDevice, OffloadRefused
from offload.record import Buffer
from offload.stats import GLOBAL, TlsStats
from offload.tls_device import DeviceTx
from offload.tls_sw import RxRecord, SwRx, SwTx
from offload.uapi import (
    SOL_TCP,
    SOL_TLS,
    TCP_ULP,
    TLS_1_3_VERSION,
    TLS_GET_RECORD_TYPE,
    TLS_MAX_PAYLOAD_SIZE,
    TLS_RX,
    TLS_RX_EXPECT_NO_PAD,
    TLS_SET_RECORD_TYPE,
    TLS_TX,
    TLS_TX_ZEROCOPY_RO,
    ContentType,
    CryptoInfo,
)
from offload.wiremodel import FaultSpec, TxPipeline

Backend: TypeAlias = Literal["auto", "user", "kernel"]
AncData: TypeAlias = list[tuple[int, int, bytes]]

_DATA = int(ContentType.APPLICATION_DATA)
_CMSG_TYPE_LEN = socket.CMSG_LEN(1)
_SEND_FLAGS_OK = (
    socket.MSG_MORE | socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL | socket.MSG_EOR | socket.MSG_OOB
)
_RECV_FLAGS_OK = socket.MSG_DONTWAIT | socket.MSG_PEEK | socket.MSG_WAITALL | socket.MSG_NOSIGNAL
_READ_CHUNK = 256 * 1024
_NONBLOCK_ACCEPT = 256 * 1024  # bytes one non-blocking send may queue (like sk_sndbuf)
_IOV_MAX = 512


class KTLSSocket:
    """A connected TCP socket with the Linux kTLS socket API.

    ``backend``: ``"user"`` does the record layer in this process,
    ``"kernel"`` forwards to the host's kTLS (clear error if it has none),
    ``"auto"`` uses the kernel where the ``tls`` ULP attaches, else user.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        backend: Backend = "auto",
        oob_records: bool = True,
        device: NetDevice | None = None,
        faults: FaultSpec | None = None,
        mss: int | None = None,
        fallback_device: NetDevice | None = None,
        record_size: int = TLS_MAX_PAYLOAD_SIZE,
    ) -> None:
        if backend not in ("auto", "user", "kernel"):
            raise ValueError(f"unknown backend {backend!r}")
        if not 1 <= record_size <= TLS_MAX_PAYLOAD_SIZE:
            raise ValueError("record_size must be 1..16384 bytes of plaintext")
        # Largest plaintext per TX record (user backend; Linux 6.x has no
        # equivalent before TLS_TX_MAX_PAYLOAD_LEN).
        self.record_size = record_size
        self._sock = sock
        self._requested: Backend = backend
        self.backend: Literal["user", "kernel"] | None = None
        self.oob_records = oob_records
        self.stats = TlsStats(parent=GLOBAL)
        self._tx: SwTx | None = None
        self._rx: SwRx | None = None
        self._tx_conf: str = "none"
        self._rx_conf: str = "none"
        self._tx_err: OSError | None = None
        self._rx_err: OSError | None = None  # sticky (bad tag)
        self._rx_abort: OSError | None = None  # reported once, then RX stops
        self._rx_dead = False
        self._tx_lock = threading.RLock()
        self._rx_lock = threading.RLock()
        self._pending: deque[memoryview] = deque()
        self._pending_bytes = 0
        self._tx_worker: threading.Thread | None = None
        self._zerocopy_ro = 0
        self.offload_refused = ""  # why the device declined TLS_TX, if it did
        self._eof = False
        self._closed = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self.device = device
        # With a device every byte sent goes through the virtual TCP path
        # (segmenter, wire faults, NIC, reassembly) on its way to the socket.
        self.wire: TxPipeline | None = None
        if device is not None:
            if backend == "kernel":
                raise ValueError("a simulated device needs the user backend")
            self.wire = TxPipeline(
                device, self._queue, mss=mss, faults=faults, fallback_device=fallback_device
            )

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
            f"tx={self._tx_conf} rx={self._rx_conf}>"
        )

    def describe(self, show_secrets: bool = False) -> dict[str, Any]:
        """The live state, as ``ss -i`` / tls_stat / ``ethtool -S`` would show it.

        JSON-ready.  Keys and IVs are redacted unless ``show_secrets``; the
        sequence numbers are integers (``tx_rec_seq``/``rx_rec_seq``).
        """
        try:
            host, port = self._sock.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = ""
        out: dict[str, Any] = {
            "fd": self._sock.fileno(),
            "peer": peer,
            "backend": self.backend,
            "tx_conf": self._tx_conf,
            "rx_conf": self._rx_conf,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "pending_tx_bytes": self._pending_bytes,
            "stats": self.stats.snapshot(),
        }
        for name, ctx in (("tx", self._tx), ("rx", self._rx)):
            if ctx is None:
                continue
            info = ctx.live_info()
            out["version"] = "1.3" if info.version == TLS_1_3_VERSION else "1.2"
            out["cipher"] = info.cipher.name
            out[f"{name}_rec_seq"] = info.seq
            crypto = {"iv": info.iv.hex(), "salt": info.salt.hex(), "key": info.key.hex()}
            out[f"{name}_crypto"] = crypto if show_secrets else dict.fromkeys(crypto, "redacted")
            out[f"{name}_crypto_info"] = info.pack().hex() if show_secrets else "redacted"
        if isinstance(self._tx, DeviceTx) and self.wire is not None:
            tx = self._tx
            ctx_state = tx.ctx
            out["device"] = {
                "name": tx.device.name,
                "driver": tx.device.driver.name,
                "expected_tcp_seq": getattr(ctx_state, "expected", None),
                "records_in_flight": tx.records_in_flight,
                "start_marker_tcp_seq": tx.space.seq(tx.start_offset),
                "stats": tx.device.stats.snapshot(),
                "device_cpu_seconds": self.wire.device_seconds,
                "faults": str(self.wire.faults) if self.wire.faults.any else "",
                "faults_injected": self.wire.counts.as_dict(),
            }
        if self.offload_refused:
            out["offload_refused"] = self.offload_refused
        return out

    @property
    def tx_conf(self) -> str:
        """``none``, ``sw`` or ``kernel`` (Linux: TLS_INFO_TXCONF)."""
        return self._tx_conf

    @property
    def rx_conf(self) -> str:
        return self._rx_conf

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
        if self.backend == "kernel":
            self._kernel_setsockopt(optname, value, optlen)
            return
        data = _optval_bytes(value, optlen)
        if optname in (TLS_TX, TLS_RX):
            self._set_crypto(optname == TLS_TX, data)
        elif optname == TLS_TX_ZEROCOPY_RO:
            self._zerocopy_ro = _bool_opt(data)
        elif optname == TLS_RX_EXPECT_NO_PAD:
            self._set_no_pad(data)
        else:
            raise os_error(errno.ENOPROTOOPT, f"unknown SOL_TLS option {optname}")

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
        if self.backend == "kernel":
            if buflen is None:
                return self._sock.getsockopt(SOL_TLS, optname)
            return self._sock.getsockopt(SOL_TLS, optname, buflen)
        n = 4 if buflen is None else buflen
        if optname in (TLS_TX, TLS_RX):
            raw = self._get_crypto(optname == TLS_TX, n)
        elif optname == TLS_TX_ZEROCOPY_RO:
            raw = self._get_int(self._zerocopy_ro, n)
        elif optname == TLS_RX_EXPECT_NO_PAD:
            if self._version() != TLS_1_3_VERSION:
                raise os_error(errno.EINVAL, "TLS_RX_EXPECT_NO_PAD needs TLS 1.3")
            raw = self._get_int(int(self._rx is not None and self._rx.no_pad), n)
        else:
            raise os_error(errno.ENOPROTOOPT, f"unknown SOL_TLS option {optname}")
        if buflen is None:
            return int.from_bytes(raw[:4], "little")
        return raw

    def _attach_ulp(self, value: int | Buffer | None) -> None:
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
                if exc.errno == errno.ENOENT:
                    if self._requested == "kernel":
                        raise os_error(
                            errno.ENOENT,
                            "this kernel has no kTLS (the tls module is not available)",
                        ) from None
                else:
                    raise
            else:
                self.backend = "kernel"
                return
        try:
            self._sock.getpeername()
        except OSError:
            raise os_error(errno.ENOTCONN, "socket is not connected") from None
        self.backend = "user"

    def _kernel_setsockopt(
        self, optname: int, value: int | Buffer | None, optlen: int | None
    ) -> None:
        if value is None:
            self._sock.setsockopt(SOL_TLS, optname, None, optlen or 0)
        else:
            self._sock.setsockopt(SOL_TLS, optname, value)
        if optname == TLS_TX:
            self._tx_conf = "kernel"
        elif optname == TLS_RX:
            self._rx_conf = "kernel"

    def _version(self) -> int | None:
        for ctx in (self._tx, self._rx):
            if ctx is not None:
                return ctx.info.version
        return None

    def _set_crypto(self, tx: bool, data: bytes) -> None:
        """``do_tls_setsockopt_conf``: the checks in Linux's order."""
        if len(data) < 4:
            raise os_error(errno.EINVAL, "optlen shorter than struct tls_crypto_info")
        current = self._tx if tx else self._rx
        other = self._rx if tx else self._tx
        name = "Tx" if tx else "Rx"
        update = current is not None
        if current is not None and current.info.version != TLS_1_3_VERSION:
            self.stats.inc(f"Tls{name}RekeyError")
            raise os_error(errno.EBUSY, "TLS 1.2 keys cannot be changed")
        info = self._parse_for_update(data, current.info if current else None, name)
        if other is not None and (
            other.info.version != info.version or other.info.cipher != info.cipher
        ):
            raise os_error(errno.EINVAL, "TX and RX must use the same version and cipher")
        if tx:
            with self._tx_lock:
                if self._tx is not None:
                    self._flush_pending(block=True)
                    for buf in self._tx.push():
                        self._emit(buf)
                    self._drain_wire()
                    self._flush_pending(block=True)
                    self._tx.rekey(info)
                else:
                    self._install_tx(info)
        else:
            with self._rx_lock:
                if self._rx is not None:
                    self._rx.rekey(info)
                else:
                    self._rx = SwRx(info)
                    self._rx_conf = "sw"
                    self.stats.inc("TlsRxSw")
                    self.stats.inc("TlsCurrRxSw")
        if update:
            self.stats.inc(f"Tls{name}RekeyOk")

    def _install_tx(self, info: CryptoInfo) -> None:
        """Offer the context to the device (tls_set_device_offload), else SW."""
        if self.wire is not None:
            try:
                dev_tx = DeviceTx(
                    info, self.wire.device, self.wire.space, self.wire.offset, self.record_size
                )
            except OffloadRefused as exc:
                self.offload_refused = str(exc)
            else:
                self._tx = dev_tx
                self.wire.attach(dev_tx)
                self._tx_conf = "device"
                self.stats.inc("TlsTxDevice")
                self.stats.inc("TlsCurrTxDevice")
                return
        self._tx = SwTx(info, self.record_size)
        self._tx_conf = "sw"
        self.stats.inc("TlsTxSw")
        self.stats.inc("TlsCurrTxSw")

    def _parse_for_update(self, data: bytes, old: CryptoInfo | None, name: str) -> CryptoInfo:
        try:
            info = CryptoInfo.unpack(data)
        except OSError:
            if old is not None:
                self.stats.inc(f"Tls{name}RekeyError")
            raise
        if old is not None and (old.version != info.version or old.cipher != info.cipher):
            self.stats.inc(f"Tls{name}RekeyError")
            raise os_error(errno.EINVAL, "a rekey must keep the version and cipher")
        return info

    def _get_crypto(self, tx: bool, n: int) -> bytes:
        """``do_tls_getsockopt_conf``: EINVAL for a short buffer, EBUSY before set."""
        if n < 4:
            raise os_error(errno.EINVAL, "buffer shorter than struct tls_crypto_info")
        ctx: SwTx | SwRx | None = self._tx if tx else self._rx
        if ctx is None:
            raise os_error(errno.EBUSY, "crypto info not set for this direction")
        lock = self._tx_lock if tx else self._rx_lock
        with lock:
            packed = ctx.live_info().pack()
        if n == 4:
            return packed[:4]
        if n != len(packed):
            raise os_error(errno.EINVAL, f"buffer must be 4 or {len(packed)} bytes")
        return packed

    @staticmethod
    def _get_int(value: int, n: int) -> bytes:
        if n < 4:
            raise os_error(errno.EINVAL, "buffer shorter than an int")
        return value.to_bytes(4, "little")

    def _set_no_pad(self, data: bytes) -> None:
        if self._version() != TLS_1_3_VERSION or len(data) < 4:
            raise os_error(errno.EINVAL, "TLS_RX_EXPECT_NO_PAD needs TLS 1.3 and an int")
        val = int.from_bytes(data[:4], "little")
        if val > 1 or any(data[4:]):
            raise os_error(errno.EINVAL, "TLS_RX_EXPECT_NO_PAD takes 0 or 1")
        if self._rx is None:
            raise os_error(errno.EINVAL, "TLS_RX not configured")
        self._rx.no_pad = bool(val)

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
        anc = list(ancdata)
        if self._tx is None:
            if self._tx_conf == "kernel" and flags & socket.MSG_OOB and self.oob_records:
                # The RFC's interface on a real kTLS socket: type byte -> cmsg.
                raw = memoryview(b"".join(bufs))
                if len(raw) < 1 or flags & socket.MSG_MORE:
                    raise os_error(errno.EINVAL, "MSG_OOB needs the record type as first byte")
                cmsg = [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes(raw[:1]))]
                return 1 + self._sock.sendmsg([raw[1:]], cmsg, flags & ~socket.MSG_OOB)
            if self.backend == "kernel":
                return self._sock.sendmsg(bufs, anc, flags)
            if flags & socket.MSG_OOB:
                raise os_error(errno.EOPNOTSUPP, "MSG_OOB before TLS_TX")
            if self.wire is not None:
                plain = b"".join(bufs)
                with self._tx_lock:
                    self._emit(bytearray(plain))
                    self._drain_wire()
                    self._flush_pending(block=True)
                return len(plain)
            return self._sock.sendmsg(bufs, anc, flags)
        if flags & ~_SEND_FLAGS_OK or (flags & socket.MSG_OOB and not self.oob_records):
            raise os_error(errno.EOPNOTSUPP, "unsupported flags for a TLS socket")
        more = bool(flags & socket.MSG_MORE)
        record_type = _DATA
        for level, ctype, cdata in anc:
            if level != SOL_TLS:
                continue
            if ctype != TLS_SET_RECORD_TYPE or len(memoryview(cdata)) < 1:
                raise os_error(errno.EINVAL, "bad SOL_TLS cmsg")
            if more:
                raise os_error(errno.EINVAL, "MSG_MORE with a control record")
            record_type = memoryview(cdata).cast("B")[0]
        data: memoryview = bufs[0] if len(bufs) == 1 else memoryview(b"".join(bufs))
        prefix = 0
        if flags & socket.MSG_OOB:
            if more:
                raise os_error(errno.EINVAL, "MSG_MORE with a control record")
            if len(data) < 1:
                raise os_error(errno.EINVAL, "MSG_OOB needs the record type as first byte")
            record_type = data[0]
            data = data[1:]
            prefix = 1
        block = self._blocking(flags)
        with self._tx_lock:
            self._check_tx_error()
            if not self._flush_pending(block) and not block:
                raise os_error(errno.EAGAIN, "TLS send queue full")
            if not block and len(data) > _NONBLOCK_ACCEPT and record_type == _DATA:
                data = data[:_NONBLOCK_ACCEPT]
            tx = self._tx
            try:
                frames = tx.frame(record_type, data, more)
            except OSError as exc:
                if exc.errno == errno.EBADMSG:  # sequence space spent: sticky
                    self._tx_err = exc
                raise
            for buf in frames:
                self._emit(buf)
                if block:  # write each batch before sealing the next
                    self._flush_pending(block=True)
            self._drain_wire()
            if tx.sealer.exhausted:
                self._tx_err = os_error(errno.EBADMSG, "record sequence number wrapped")
            self.bytes_sent += len(data)
            self._flush_pending(block)
            self._kick_worker()
        return len(data) + prefix

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send a file's bytes as data records; returns the bytes sent.

        Like ``socket.sendfile``: reads from ``offset`` (``count`` bytes or
        to EOF) and leaves the file position after the last byte sent.  The
        user backend reads each chunk straight into the record buffer
        (``os.preadv`` into the plaintext slots) and seals it in place, so
        file data is copied once, by the AEAD.  The kernel backend uses
        ``os.sendfile`` on the kTLS socket.
        """
        if self._tx is None or self._tx_conf == "kernel":
            sent = self._sock.sendfile(file, offset, count)
            self.bytes_sent += sent
            return sent
        fd = file.fileno()
        total = 0
        chunk_max = self._tx.batch_records * self._tx.max_payload
        with self._tx_lock:
            if self._tx.open_record:
                total = self._fill_open_record(fd, offset, count)
            while count is None or total < count:
                self._check_tx_error()
                want = chunk_max if count is None else min(chunk_max, count - total)
                tx = self._tx
                try:
                    buf, slots = tx.lay_out(want)
                except OSError as exc:
                    if exc.errno == errno.EBADMSG:
                        self._tx_err = exc
                    raise
                got = os.preadv(fd, _slot_payloads(slots, tx.sealer.is13), offset + total)
                if got == 0:
                    break
                if got < want:
                    buf, slots = _shrink(tx, buf, slots, got)
                tx.push_slots(buf, slots)
                if tx.sealer.exhausted:
                    self._tx_err = os_error(errno.EBADMSG, "record sequence number wrapped")
                self._emit(buf)
                self._flush_pending(block=True)
                total += got
                if got < want:
                    break
            self._drain_wire()
            self._flush_pending(block=True)
            self.bytes_sent += total
        if hasattr(file, "seek"):
            file.seek(offset + total)
        return total

    def _fill_open_record(self, fd: int, offset: int, count: int | None) -> int:
        """sendfile after ``send(..., MSG_MORE)``: the file's first bytes
        complete the open record, which is then pushed; returns the bytes
        taken from the file.

        Linux does the same (splice appends to the open record and
        ``tls_sw_splice_eof`` pushes it), so an HTTP header sent with
        MSG_MORE and a small file share one record, and the header never
        goes out after the body.
        """
        tx = self._tx
        if tx is None:
            return 0
        room = tx.max_payload - len(tx.open_record)
        head = os.pread(fd, room if count is None else min(room, count), offset)
        self._check_tx_error()
        try:
            frames = tx.frame(_DATA, head, more=False)
        except OSError as exc:
            if exc.errno == errno.EBADMSG:  # sequence space spent: sticky
                self._tx_err = exc
            raise
        for buf in frames:
            self._emit(buf)
            self._flush_pending(block=True)
        if tx.sealer.exhausted:
            self._tx_err = os_error(errno.EBADMSG, "record sequence number wrapped")
        return len(head)

    def _try_flush(self) -> None:
        """Push queued TX bytes if no sender holds the TX side right now.

        A reader must never wait for a writer blocked on a full socket (one
        thread may read while another sends); the sender flushes anyway.
        """
        if self._pending and self._tx_lock.acquire(blocking=False):
            try:
                self._flush_pending(block=False)
            except OSError as exc:
                # A dead TX side must not hide what the peer sent before it
                # hung up (its alert): keep the error for the next send.
                self._tx_err = self._tx_err or exc
            finally:
                self._tx_lock.release()

    def _blocking(self, flags: int) -> bool:
        """Whether this call may wait, as for a Python socket: with a timeout
        set, Python waits up to it even for MSG_DONTWAIT (then TimeoutError)."""
        if not self._sock.getblocking():
            return False
        return not (flags & socket.MSG_DONTWAIT and self._sock.gettimeout() is None)

    def flush(self, timeout: float | None = None) -> bool:
        """Push queued ciphertext to the socket; True when nothing is left."""
        with self._tx_lock:
            return self._flush_pending(block=True, timeout=timeout)

    @property
    def pending_tx_bytes(self) -> int:
        """Sealed bytes not yet accepted by the TCP socket."""
        return self._pending_bytes

    def _check_tx_error(self) -> None:
        if self._tx_err is not None:
            raise self._tx_err

    def _emit(self, buf: bytearray) -> None:
        """Sealed (or, for a device, framed) bytes leave the layer."""
        if self.wire is not None:
            self.wire.send(buf)
        else:
            self._queue(buf)

    def _drain_wire(self) -> None:
        if self.wire is not None:
            self.wire.drain()

    @property
    def device_seconds(self) -> float:
        """CPU time spent inside the NIC driver (what hardware would do)."""
        return self.wire.device_seconds if self.wire is not None else 0.0

    def _queue(self, buf: bytes | bytearray | memoryview) -> None:
        if buf:
            self._pending.append(memoryview(buf))
            self._pending_bytes += len(buf)

    def _flush_pending(self, block: bool, timeout: float | None = None) -> bool:
        """Write queued records; never leaves a record half written *and
        forgotten*: the rest stays queued until the socket takes it."""
        pending = self._pending
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            try:
                if not block and not _ready(self._sock, select.POLLOUT):
                    return False
                n = self._sock.sendmsg(list(_take(pending, _IOV_MAX)))
            except BlockingIOError:
                if not block:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                select.select([], [self._sock], [], left)
                continue
            except InterruptedError:
                continue
            self._pending_bytes -= n
            while n:
                head = pending[0]
                if n >= len(head):
                    n -= len(head)
                    pending.popleft()
                    if isinstance(head.obj, bytearray):
                        if self.wire is not None:
                            self.wire.recycle(head.obj)
                        elif self._tx is not None:
                            self._tx.recycle(head.obj)
                else:
                    pending[0] = head[n:]
                    n = 0
        return True

    def _kick_worker(self) -> None:
        """Finish writing queued records in the background (tx_work_handler).

        A non-blocking sender may return before its records are on the wire;
        the kernel pushes them when TCP has room.  This thread does the same
        so the peer always gets whole records even if the caller stops
        sending.
        """
        if not self._pending or (self._tx_worker and self._tx_worker.is_alive()):
            return

        def work() -> None:
            while not self._closed:
                try:
                    select.select([], [self._sock], [], 0.5)
                except (OSError, ValueError):
                    return
                with self._tx_lock:
                    try:
                        if self._flush_pending(block=False):
                            return
                    except OSError as exc:
                        self._tx_err = exc
                        return

        self._tx_worker = threading.Thread(target=work, name="ktls-tx-work", daemon=True)
        self._tx_worker.start()

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
        if self._rx is None:
            self._try_flush()
            return self._sock.recvmsg(bufsize, ancbufsize, flags)
        out: list[bytes] = []
        _n, anc, msg_flags = self._receive(out, None, bufsize, ancbufsize, flags)
        return b"".join(out), anc, msg_flags, None

    def recvmsg_into(
        self, buffers: Iterable[Buffer], ancbufsize: int = 0, flags: int = 0, nbytes: int = 0
    ) -> tuple[int, AncData, int, Any]:
        """``recvmsg`` into the caller's buffers (``socket.recvmsg_into``).

        With one buffer, records are decrypted straight into it: the fast
        receive path (one copy from the socket, none after the AEAD).
        ``nbytes`` (not in ``socket``'s signature) limits the read like
        ``recv_into``'s.
        """
        views = [memoryview(b).cast("B") for b in buffers]
        if nbytes:
            views = _limit(views, nbytes)
        if self._rx is None:
            self._try_flush()
            return self._sock.recvmsg_into(views, ancbufsize, flags)
        dst = views[0] if len(views) == 1 else memoryview(bytearray(sum(map(len, views))))
        n, anc, msg_flags = self._receive(None, dst, len(dst), ancbufsize, flags)
        if len(views) > 1:
            off = 0
            for v in views:
                take = min(len(v), n - off)
                v[:take] = dst[off : off + take]
                off += take
        return n, anc, msg_flags, None

    def _receive(
        self,
        out: list[bytes] | None,
        dst: memoryview | None,
        bufsize: int,
        ancbufsize: int,
        flags: int,
    ) -> tuple[int, AncData, int]:
        """The recvmsg loop, delivering into ``dst`` or appending to ``out``."""
        if flags & ~_RECV_FLAGS_OK:
            raise os_error(errno.EOPNOTSUPP, "unsupported recv flags for a TLS socket")
        self._try_flush()
        block = self._blocking(flags)
        peek = bool(flags & socket.MSG_PEEK)
        waitall = bool(flags & socket.MSG_WAITALL)
        with self._rx_lock:
            rx = self._rx
            assert rx is not None
            # Records decrypted before an error (e.g. by MSG_PEEK) are still
            # delivered first, as Linux serves its rx_list before sk_err.
            if not any(r.remaining for r in rx.ready):
                if self._rx_err is not None:
                    raise self._rx_err
                if self._rx_abort is not None:
                    self._rx_dead = True
                    exc, self._rx_abort = self._rx_abort, None
                    raise exc
                if self._rx_dead:
                    self._dead_recv(block)
                    return 0, [], 0
            copied = 0
            record_type: int | None = None
            anc: AncData = []
            msg_flags = 0
            idx = 0  # index into rx.ready (advances only when peeking)
            direct = dst if not peek else None
            while copied < bufsize:
                try:
                    rec = self._record_at(
                        rx,
                        idx,
                        block and (copied == 0 or waitall),
                        None
                        if direct is None or record_type not in (None, _DATA)
                        else direct[copied:bufsize],
                    )
                except OSError:
                    if record_type is None:
                        if self._rx_abort is not None:
                            self._rx_abort = None
                            self._rx_dead = True
                        raise
                    break  # deliver what was read; the error comes with the next call
                if rec is None:
                    if record_type is None:
                        if rx.key_update_pending and idx >= len(rx.ready):
                            raise os_error(errno.EKEYEXPIRED, "waiting for the next RX key")
                        if self._eof:
                            return 0, [], msg_flags
                        raise os_error(errno.EAGAIN, "no complete record yet")
                    break
                if isinstance(rec, int):  # a data record decrypted into dst
                    ctype, take = _DATA, rec
                else:
                    ctype = rec.content_type
                    take = min(bufsize - copied, rec.remaining)
                if ctype == _DATA and take == 0:
                    # An empty data record carries nothing to deliver.
                    if isinstance(rec, RxRecord):
                        if peek:
                            idx += 1
                        else:
                            rx.consume(rec, 0)
                    continue
                if record_type is None:
                    if ancbufsize >= _CMSG_TYPE_LEN:
                        anc.append((SOL_TLS, TLS_GET_RECORD_TYPE, bytes([ctype])))
                    elif ctype != _DATA:
                        raise os_error(errno.EIO, "control record and no room for its cmsg")
                    elif ancbufsize > 0:
                        msg_flags |= socket.MSG_CTRUNC
                    record_type = ctype
                elif ctype != record_type:
                    break
                if isinstance(rec, RxRecord):
                    piece = rec.data[rec.offset : rec.offset + take]
                    if dst is not None:
                        dst[copied : copied + take] = piece
                    elif out is not None:
                        out.append(bytes(piece))
                    if peek:
                        idx += 1
                    else:
                        rx.consume(rec, take)
                copied += take
                if ctype != _DATA:
                    break
            if not peek:
                self.bytes_received += copied
            return copied, anc, msg_flags

    def _record_at(
        self, rx: SwRx, idx: int, block: bool, dst: memoryview | None = None
    ) -> RxRecord | int | None:
        """The ready record at ``idx``, decrypting and reading as needed.

        With ``dst`` and nothing queued, a data record may be decrypted
        straight into it: its length is returned instead of a record.
        """
        while idx >= len(rx.ready):
            if self._rx_err is not None:
                raise self._rx_err
            if self._rx_abort is not None or self._rx_dead:
                raise self._rx_abort or os_error(errno.EAGAIN, "receive path stopped")
            try:
                rec = rx.decrypt_next(dst if not rx.ready else None)
            except OSError as exc:
                self._rx_fail(exc)
                raise
            if isinstance(rec, int):
                return rec
            if rec is not None:
                if rx.key_update_pending and rec is rx.ready[-1] and rec.content_type == 22:
                    self.stats.inc("TlsRxRekeyReceived")
                continue
            if rx.key_update_pending or self._eof:
                return None
            if not self._fill(rx, block) and not block:
                return None
        return rx.ready[idx]

    def _rx_fail(self, exc: OSError) -> None:
        if isinstance(exc, StreamAbort):
            self._rx_abort = exc
            return
        if exc.errno == errno.EBADMSG:
            self.stats.inc("TlsDecryptError")
        self._rx_err = exc

    def _dead_recv(self, block: bool) -> None:
        """After an abort the parser is stopped: no data, only EOF or waiting
        (Python raises TimeoutError when the socket's timeout expires)."""
        while not self._eof:
            if not block:
                raise os_error(errno.EAGAIN, "receive path stopped after an error")
            if not self._sock.recv(_READ_CHUNK):
                self._eof = True

    def _fill(self, rx: SwRx, block: bool) -> bool:
        """Read more ciphertext, straight into the parser's buffer; False
        when nothing could be read now."""
        try:
            if not block and not _ready(self._sock, select.POLLIN):
                return False
            n = self._sock.recv_into(rx.parser.write_space(_READ_CHUNK))
        except (BlockingIOError, InterruptedError):
            return False
        if not n:
            self._eof = True
            return False
        rx.parser.commit(n)
        return True

    @property
    def rx_truncated(self) -> bool:
        """True when the peer closed in the middle of a record."""
        return self._eof and self._rx is not None and self._rx.parser.buffered > 0

    # -- teardown -------------------------------------------------------------

    def shutdown(self, how: int) -> None:
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and self._tx is not None:
            with self._tx_lock:
                for buf in self._tx.push():
                    self._emit(buf)
                self._drain_wire()
                self._flush_pending(block=True, timeout=30)
        self._sock.shutdown(how)

    def close(self) -> None:
        """Push what is queued (bounded wait), then close; counters drop."""
        if self._closed:
            return
        try:
            if self._tx is not None and self._sock.fileno() >= 0:
                with self._tx_lock:
                    for buf in self._tx.push():
                        self._emit(buf)
                    self._drain_wire()
                    self._flush_pending(block=True, timeout=5)
        except OSError:
            pass
        finally:
            self._closed = True
            if self._tx_conf == "sw":
                self.stats.inc("TlsCurrTxSw", -1)
            if isinstance(self._tx, DeviceTx):
                self.stats.inc("TlsCurrTxDevice", -1)
                self._tx.close()
            if self._rx_conf == "sw":
                self.stats.inc("TlsCurrRxSw", -1)
            self._tx_conf = self._rx_conf = "none"
            self._sock.close()

    def inject_rx_plaintext(self, data: Buffer, content_type: int = _DATA) -> None:
        """Queue plaintext the handshake library already decrypted.

        Delivered before anything else, as a record of ``content_type``; so
        application data OpenSSL read during the handshake is never lost.
        """
        if self._rx is None:
            raise os_error(errno.EBUSY, "TLS_RX not set")
        with self._rx_lock:
            self._rx.ready.appendleft(RxRecord(content_type, memoryview(bytes(data))))

    def inject_rx(self, ciphertext: Buffer) -> None:
        """Queue bytes that were read from the socket before TLS_RX was set.

        The handshake may read past its last record; those bytes belong to
        the record layer and must not be lost (user backend only).
        """
        if self._rx is None:
            raise os_error(errno.EBUSY, "TLS_RX not set")
        self._rx.feed(ciphertext)


def _ready(sock: socket.socket, event: int) -> bool:
    """Would an operation on ``sock`` proceed now?  (Python sockets with a
    timeout wait inside recv/send even with MSG_DONTWAIT, so ask first.)"""
    p = select.poll()
    p.register(sock, event)
    return bool(p.poll(0))


def _limit(views: list[memoryview], nbytes: int) -> list[memoryview]:
    """The first ``nbytes`` of a scatter list (``recv_into``'s nbytes)."""
    out = []
    for v in views:
        if nbytes <= 0:
            break
        out.append(v[:nbytes])
        nbytes -= len(out[-1])
    return out


def _take(q: deque[memoryview], n: int) -> Iterable[memoryview]:
    for i, item in enumerate(q):
        if i >= n:
            return
        yield item


def _optval_bytes(value: int | Buffer | None, optlen: int | None) -> bytes:
    if value is None:
        return bytes(optlen or 0)
    if isinstance(value, int):
        return value.to_bytes(4, "little", signed=value < 0)
    data = bytes(value)
    return data if optlen is None else data[:optlen]


def _bool_opt(data: bytes) -> int:
    if len(data) != 4:
        raise os_error(errno.EINVAL, "option takes an int")
    val = int.from_bytes(data, "little")
    if val > 1:
        raise os_error(errno.EINVAL, "option takes 0 or 1")
    return val


def _slot_payloads(slots: Sequence[memoryview], is13: bool) -> list[memoryview]:
    """The plaintext part of each slot (TLS 1.3 slots end with the type byte)."""
    return [s[:-1] for s in slots] if is13 else list(slots)


def _shrink(
    tx: SwTx, buf: bytearray, slots: list[memoryview], got: int
) -> tuple[bytearray, list[memoryview]]:
    """Re-lay a short read (EOF inside the chunk) into a right-sized buffer."""
    new_buf, new_slots = tx.batches.lay_out(got)
    payloads = _slot_payloads(slots, tx.sealer.is13)
    pos = 0
    flat = b"".join(bytes(p) for p in payloads)[:got]
    for dst in _slot_payloads(new_slots, tx.sealer.is13):
        n = len(dst)
        dst[:] = flat[pos : pos + n]
        pos += n
    del buf, slots
    return new_buf, new_slots


__all__ = ["TLS_MAX_PAYLOAD_SIZE", "KTLSSocket"]
