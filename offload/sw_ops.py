"""The software backend's socket operations: options, send, receive, teardown.

What ``tls_sw_sendmsg``/``tls_sw_recvmsg`` and ``do_tls_setsockopt`` do for
a kTLS socket whose record layer lives in this process.  The option bytes
are checked by the codec (``offload.sockopt``); sending and receiving are
``offload.sw_send`` and ``offload.sw_recv``.  Before the ULP is attached
the same object serves the socket: no key set, bytes pass in the clear.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, Literal

from offload import sockopt
from offload.ops import AncData
from offload.record import Buffer
from offload.state import DeviceState, RxState, TlsConf
from offload.stats import TlsStats
from offload.sw_recv import SwReceiver
from offload.sw_send import SwSender
from offload.txpath import TxPath
from offload.uapi import (
    TLS_RX,
    TLS_RX_EXPECT_NO_PAD,
    TLS_TX,
    TLS_TX_MAX_PAYLOAD_LEN,
    TLS_TX_ZEROCOPY_RO,
    CryptoInfo,
)


class SwOps:
    """The record layer in this process, TX and RX."""

    name: Literal["sw"] = "sw"

    def __init__(
        self,
        sock: socket.socket,
        stats: TlsStats,
        *,
        path: TxPath | None,
        record_size: int,
        oob_records: bool,
    ) -> None:
        self._sock = sock
        self._stats = stats
        self.sender = SwSender(sock, stats, path, record_size, oob_records)
        self.receiver = SwReceiver(sock, stats)

    # -- state --------------------------------------------------------------------

    @property
    def tx_conf(self) -> TlsConf:
        return self.sender.conf

    @property
    def rx_conf(self) -> TlsConf:
        return self.receiver.conf

    @property
    def rx_state(self) -> RxState:
        return self.receiver.state

    @property
    def bytes_sent(self) -> int:
        return self.sender.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.receiver.bytes_received

    @property
    def pending_tx_bytes(self) -> int:
        return self.sender.queue.pending_bytes

    @property
    def offload_refused(self) -> str:
        return self.sender.offload_refused

    @property
    def rx_truncated(self) -> bool:
        return self.receiver.truncated

    def live_info(self, tx: bool) -> CryptoInfo | None:
        """For a snapshot: read without the locks, never waiting for a
        blocked reader or writer (getsockopt takes them)."""
        side = self.sender if tx else self.receiver
        return side.live_info(locked=False)

    def device_state(self) -> DeviceState | None:
        return self.sender.device_state()

    def device_seconds(self) -> float:
        report = self.sender.path.report()
        return report.device_seconds if report is not None else 0.0

    # -- options (do_tls_setsockopt / do_tls_getsockopt) ----------------------------

    def setsockopt(self, optname: int, value: int | Buffer | None, optlen: int | None) -> None:
        data = sockopt.optval_bytes(value, optlen)
        if optname in (TLS_TX, TLS_RX):
            self._set_crypto(optname == TLS_TX, data)
        elif optname == TLS_TX_ZEROCOPY_RO:
            self.sender.zerocopy_ro = sockopt.decode_zerocopy_ro(data)
        elif optname == TLS_RX_EXPECT_NO_PAD:
            rx_set = self.receiver.rx is not None
            self.receiver.set_no_pad(sockopt.decode_no_pad(data, self._version(), rx_set))
        elif optname == TLS_TX_MAX_PAYLOAD_LEN:
            self.sender.set_max_payload(data, self._version())
        else:
            raise sockopt.unknown_option(optname)

    def getsockopt(self, optname: int, buflen: int | None) -> int | bytes:
        n = 4 if buflen is None else buflen
        if optname in (TLS_TX, TLS_RX):
            side = self.sender if optname == TLS_TX else self.receiver
            raw = sockopt.encode_crypto_info(side.live_info(), n)
        elif optname == TLS_TX_ZEROCOPY_RO:
            raw = sockopt.encode_int(self.sender.zerocopy_ro, n)
        elif optname == TLS_RX_EXPECT_NO_PAD:
            sockopt.check_no_pad_get(self._version())
            raw = sockopt.encode_int(int(self.receiver.no_pad), n)
        elif optname == TLS_TX_MAX_PAYLOAD_LEN:
            raw = sockopt.encode_u16(self.sender.record_size, n)
        else:
            raise sockopt.unknown_option(optname)
        return sockopt.as_getsockopt_result(raw, buflen)

    def _version(self) -> int | None:
        for info in (self.sender.info, self.receiver.info):
            if info is not None:
                return info.version
        return None

    def _set_crypto(self, tx: bool, data: bytes) -> None:
        """``do_tls_setsockopt_conf``: the codec's checks, then install or rekey."""
        current = self.sender.info if tx else self.receiver.info
        other = self.receiver.info if tx else self.sender.info
        name = "Tx" if tx else "Rx"
        update = current is not None
        try:
            info = sockopt.decode_crypto_info(data, current, other)
        except OSError:
            if sockopt.counts_rekey_error(data, update):
                self._stats.inc(f"Tls{name}RekeyError")
            raise
        if tx:
            self.sender.set_key(info)
        else:
            self.receiver.set_key(info)
        if update:
            self._stats.inc(f"Tls{name}RekeyOk")

    # -- data -----------------------------------------------------------------------

    def sendmsg(
        self, bufs: Sequence[memoryview], ancdata: Sequence[tuple[int, int, Buffer]], flags: int
    ) -> int:
        return self.sender.sendmsg(bufs, ancdata, flags)

    def sendfile(self, file: Any, offset: int, count: int | None) -> int:
        return self.sender.sendfile(file, offset, count)

    def recvmsg(self, bufsize: int, ancbufsize: int, flags: int) -> tuple[bytes, AncData, int, Any]:
        """Receive from one record type; the type in a TLS_GET_RECORD_TYPE cmsg."""
        if self.receiver.rx is None:
            self.sender.queue.try_flush()
            return self._sock.recvmsg(bufsize, ancbufsize, flags)
        sockopt.check_recv_flags(flags)
        self.sender.queue.try_flush()
        out: list[bytes] = []
        _n, anc, msg_flags = self.receiver.receive(out, None, bufsize, ancbufsize, flags)
        return b"".join(out), anc, msg_flags, None

    def recvmsg_into(
        self, views: list[memoryview], ancbufsize: int, flags: int
    ) -> tuple[int, AncData, int, Any]:
        """``recvmsg`` into the caller's buffers.

        With one buffer, records are decrypted straight into it: the fast
        receive path (one copy from the socket, none after the AEAD).
        """
        if self.receiver.rx is None:
            self.sender.queue.try_flush()
            return self._sock.recvmsg_into(views, ancbufsize, flags)
        sockopt.check_recv_flags(flags)
        self.sender.queue.try_flush()
        dst = views[0] if len(views) == 1 else memoryview(bytearray(sum(map(len, views))))
        n, anc, msg_flags = self.receiver.receive(None, dst, len(dst), ancbufsize, flags)
        if len(views) > 1:
            off = 0
            for v in views:
                take = min(len(v), n - off)
                v[:take] = dst[off : off + take]
                off += take
        return n, anc, msg_flags, None

    def inject_rx(self, ciphertext: Buffer) -> None:
        self.receiver.inject(ciphertext)

    def inject_rx_plaintext(self, data: Buffer, content_type: int) -> None:
        self.receiver.inject_plaintext(data, content_type)

    # -- teardown ---------------------------------------------------------------------

    def flush(self, timeout: float | None) -> bool:
        return self.sender.flush(timeout)

    def shutdown(self, how: int) -> None:
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self.sender.push_open_record(timeout=30)
        self._sock.shutdown(how)

    def close(self) -> None:
        """Push what is queued (bounded wait), then close; counters drop."""
        try:
            if self.sender.tx is not None and self._sock.fileno() >= 0:
                self.sender.push_open_record(timeout=5)
        except OSError:
            pass
        finally:
            self.sender.close()
            self.receiver.close()
            self._sock.close()


__all__ = ["SwOps"]
