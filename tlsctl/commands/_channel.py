"""A TLS connection after the handshake: offloaded to the kTLS layer, or not.

``send`` and ``serve`` move bytes through a :class:`Channel` and do not care
whether the record layer is ``offload.KTLSSocket`` (``--offload sw|kernel``)
or pyOpenSSL itself (``--offload none``, or a suite the layer cannot take).

The kTLS side has to do what the kernel leaves to user space: read control
records through the ``TLS_GET_RECORD_TYPE`` cmsg, skip the NewSessionTickets
a TLS 1.3 server sends after the handshake, answer a KeyUpdate by installing
the next secret, and turn close_notify into end-of-stream.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, Protocol

from OpenSSL import SSL

from offload.kernel import kernel_has_ktls
from offload.keys import crypto_info_tls13, tls13_next_secret
from offload.ktls_socket import KTLSSocket
from offload.netdev import create_device
from offload.uapi import (
    SOL_TLS,
    TLS_GET_RECORD_TYPE,
    TLS_RX,
    TLS_SET_RECORD_TYPE,
    TLS_TX,
    ContentType,
    CryptoInfo,
)
from offload.wiremodel import FaultSpec
from tlsctl.control import register
from tlsctl.handshake import HandshakeError, HandshakeResult, install_offload

Offload = str
"""``auto``, ``sw``, ``kernel``, ``none`` or a NIC driver name (``sim-nic``)."""
BASE_OFFLOADS = ("auto", "sw", "kernel", "none")
_BACKENDS: dict[str, Literal["auto", "user", "kernel"]] = {
    "auto": "auto",
    "sw": "user",
    "kernel": "kernel",
}

_ALERT = int(ContentType.ALERT)
_HANDSHAKE = int(ContentType.HANDSHAKE)
_DATA = int(ContentType.APPLICATION_DATA)
_NEW_SESSION_TICKET = 4
_KEY_UPDATE = 24
_CLOSE_NOTIFY = b"\x01\x00"  # warning, close_notify
_CHUNK = 256 * 1024

# RFC 8446 6: the names users see when a peer aborts.
_ALERT_NAMES = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    47: "illegal_parameter",
    48: "unknown_ca",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    80: "internal_error",
    90: "user_canceled",
    109: "missing_extension",
    116: "certificate_required",
}


class ChannelError(Exception):
    """The connection failed after the handshake; one line for the user."""


class Channel(Protocol):
    """What the commands need from an established TLS connection."""

    mode: str

    def send_all(self, data: bytes) -> None: ...
    def send_file(self, f: BinaryIO, offset: int, count: int) -> int: ...
    def recv(self, n: int) -> bytes: ...
    def close_notify(self) -> None: ...
    def close(self) -> None: ...
    def live_seqs(self) -> tuple[int | None, int | None]: ...


def alert_name(desc: int) -> str:
    return _ALERT_NAMES.get(desc, f"alert {desc}")


class KtlsChannel:
    """The connection with its record layer in ``offload.KTLSSocket``."""

    def __init__(self, k: KTLSSocket, res: HandshakeResult) -> None:
        self.k = k
        self.res = res
        # Visible to `tlsctl inspect-context` while the connection lives.
        self._control = register(k, label=res.side, extra={"cipher_suite": res.cipher_name})
        # What the layer actually uses: "sw", "kernel", or the NIC driver's name.
        self.mode = k.device.driver.name if k.tx_conf == "device" and k.device else k.tx_conf
        self.peer_closed = False
        self.tickets = 0
        self.key_updates = 0
        self._tx_secret = res.tx_secret
        self._rx_secret = res.rx_secret

    def send_all(self, data: bytes) -> None:
        self._tx(lambda: self.k.sendall(data))

    def send_file(self, f: BinaryIO, offset: int, count: int) -> int:
        sent = 0

        def go() -> None:
            nonlocal sent
            sent = self.k.sendfile(f, offset, count)

        self._tx(go)
        return sent

    @staticmethod
    def _tx(op: Callable[[], None]) -> None:
        try:
            op()
        except (BrokenPipeError, ConnectionResetError):
            raise ChannelError("peer closed the connection while we were sending") from None
        except OSError as exc:
            raise ChannelError(f"send failed: {exc.strerror or exc}") from None

    def recv(self, n: int) -> bytes:
        """Application data, or b"" at close_notify / EOF; control records handled."""
        while True:
            if self.peer_closed:
                return b""
            try:
                data, anc, _flags, _addr = self.k.recvmsg(max(n, 1 << 14), socket.CMSG_SPACE(1))
            except ConnectionResetError:
                raise ChannelError("peer reset the connection") from None
            except OSError as exc:
                if exc.errno == errno.EBADMSG:
                    self._alert(20)
                    raise ChannelError(
                        "record failed authentication (corrupted or forged data)"
                    ) from None
                raise ChannelError(f"receive failed: {exc.strerror or exc}") from None
            ctype = _DATA
            for level, kind, value in anc:
                if level == SOL_TLS and kind == TLS_GET_RECORD_TYPE and value:
                    ctype = value[0]
            if ctype == _DATA:
                if not data and self.k.rx_truncated:
                    raise ChannelError("peer closed the connection in the middle of a record")
                return data
            if ctype == _ALERT:
                self._on_alert(data)
            elif ctype == _HANDSHAKE:
                self._on_handshake(data)
            else:
                self._alert(10)
                raise ChannelError(f"unexpected record type {ctype} after the handshake")

    def _on_alert(self, data: bytes) -> None:
        if len(data) < 2:
            raise ChannelError("malformed alert from peer")
        if data[1] == 0:
            self.peer_closed = True
            return
        if data[0] == 1 and data[1] == 90:
            return  # user_canceled warning: a close_notify follows
        raise ChannelError(f"peer sent alert {alert_name(data[1])}")

    def _on_handshake(self, data: bytes) -> None:
        """NewSessionTicket: ignore (no resumption here); KeyUpdate: rekey."""
        pos = 0
        while pos + 4 <= len(data):
            mtype = data[pos]
            length = int.from_bytes(data[pos + 1 : pos + 4], "big")
            body = data[pos + 4 : pos + 4 + length]
            pos += 4 + length
            if mtype == _NEW_SESSION_TICKET:
                self.tickets += 1
            elif mtype == _KEY_UPDATE and self.res.is_tls13 and len(body) == 1:
                self._key_update(request=body[0] == 1)
            else:
                self._alert(10)
                raise ChannelError(f"unexpected handshake message {mtype} after the handshake")

    def _key_update(self, request: bool) -> None:
        """RFC 8446 4.6.3: next RX secret; if asked, send ours and switch TX."""
        suite = self.res.suite
        if suite is None or not self._rx_secret:
            raise ChannelError("KeyUpdate without TLS 1.3 secrets")
        self._rx_secret = tls13_next_secret(self._rx_secret, suite)
        self.k.setsockopt(SOL_TLS, TLS_RX, crypto_info_tls13(self._rx_secret, suite, 0).pack())
        self.key_updates += 1
        if request:
            self.k.sendmsg(
                [bytes([_KEY_UPDATE, 0, 0, 1, 0])], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x16")]
            )
            self._tx_secret = tls13_next_secret(self._tx_secret, suite)
            self.k.setsockopt(
                SOL_TLS, TLS_TX, crypto_info_tls13(self._tx_secret, suite, 0).pack()
            )

    def _alert(self, desc: int) -> None:
        """Best effort fatal alert: the peer learns why we stop."""
        with contextlib.suppress(OSError):
            self.k.sendmsg([bytes([2, desc])], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x15")])

    def close_notify(self) -> None:
        try:
            self.k.sendmsg([_CLOSE_NOTIFY], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x15")])
            self.k.flush(timeout=10)
        except OSError as exc:
            raise ChannelError(f"cannot send close_notify: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._control.close()
        self.k.close()

    def live_seqs(self) -> tuple[int | None, int | None]:
        """The next record numbers, read back as Linux offers: getsockopt."""
        out: list[int | None] = []
        for opt, info in ((TLS_TX, self.res.tx_info), (TLS_RX, self.res.rx_info)):
            try:
                size = info.spec.struct_size if info else 0
                raw = self.k.getsockopt(SOL_TLS, opt, size)
                out.append(CryptoInfo.unpack(raw).seq if isinstance(raw, bytes) else None)
            except OSError:
                out.append(None)
        return out[0], out[1]


class OpenSSLChannel:
    """The connection kept in pyOpenSSL (``--offload none`` or no kTLS cipher).

    The memory BIOs stay in use: OpenSSL seals and opens, this class moves
    bytes between them and the socket.
    """

    mode = "none"

    def __init__(self, sock: socket.socket, res: HandshakeResult) -> None:
        self.sock = sock
        self.conn = res.conn
        self.res = res
        self.peer_closed = False
        self._plain = res.plaintext
        if res.leftover:
            self.conn.bio_write(res.leftover)

    def _flush(self) -> None:
        out = bytearray()
        while True:
            try:
                chunk = self.conn.bio_read(_CHUNK)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        if out:
            try:
                self.sock.sendall(out)
            except (BrokenPipeError, ConnectionResetError):
                raise ChannelError("peer closed the connection while we were sending") from None

    def send_all(self, data: bytes) -> None:
        mv = memoryview(data)
        for pos in range(0, len(mv), _CHUNK):
            try:
                self.conn.sendall(bytes(mv[pos : pos + _CHUNK]))
            except SSL.Error as exc:
                raise ChannelError(f"send failed: {exc}") from None
            self._flush()

    def send_file(self, f: BinaryIO, offset: int, count: int) -> int:
        f.seek(offset)
        sent = 0
        while sent < count:
            chunk = f.read(min(_CHUNK, count - sent))
            if not chunk:
                break
            self.send_all(chunk)
            sent += len(chunk)
        return sent

    def recv(self, n: int) -> bytes:
        if self._plain:
            data, self._plain = self._plain[:n], self._plain[n:]
            return data
        while True:
            try:
                data = self.conn.recv(n)
                self._flush()
                return bytes(data)
            except SSL.WantReadError:
                self._flush()
            except SSL.ZeroReturnError:
                self.peer_closed = True
                return b""
            except SSL.Error as exc:
                raise ChannelError(f"TLS error from peer: {exc}") from None
            try:
                chunk = self.sock.recv(_CHUNK)
            except ConnectionResetError:
                raise ChannelError("peer reset the connection") from None
            if not chunk:
                return b""
            self.conn.bio_write(chunk)

    def close_notify(self) -> None:
        with contextlib.suppress(SSL.Error):
            self.conn.shutdown()
        self._flush()

    def close(self) -> None:
        self.sock.close()

    def live_seqs(self) -> tuple[int | None, int | None]:
        return None, None


@functools.cache
def _kernel_ktls() -> bool:
    return kernel_has_ktls()[0]


def exact_reads(offload: str) -> bool:
    """Should the handshake avoid reading past its last record?

    Yes when the kernel may take RX: bytes already read cannot be handed
    back to it (the software layer takes them through ``inject_rx``).
    """
    return offload == "kernel" or (offload == "auto" and _kernel_ktls())


@dataclass(frozen=True)
class DeviceSpec:
    """How to build the simulated NIC path for ``--offload <driver>``."""

    faults: FaultSpec | None = None
    mss: int | None = None

    def layer_kwargs(self, driver: str) -> dict[str, Any]:
        """KTLSSocket arguments: a fresh device per connection (its own
        counters), and a second one without the context for redirects."""
        kw: dict[str, Any] = {"device": create_device(driver), "mss": self.mss}
        if self.faults is not None:
            kw["faults"] = self.faults
            kw["fallback_device"] = create_device(driver, f"{driver}1")
        return kw


def device_report(chan: KtlsChannel) -> dict[str, Any]:
    """What the NIC did for this connection: counters (ethtool names, zeros
    left out), device CPU time, and the faults that made it take slow paths."""
    k = chan.k
    dev = k.describe().get("device")
    if not dev:
        return {}
    out: dict[str, Any] = {
        "device_cpu_seconds": round(dev["device_cpu_seconds"], 6),
        "device_counters": {n: v for n, v in dev["stats"].items() if v},
    }
    if dev["faults"]:
        out["faults"] = dev["faults"]
        out["faults_injected"] = {n: v for n, v in dev["faults_injected"].items() if v}
    if k.wire is not None and k.wire.fallback_device is not None:
        fb = k.wire.fallback_device.stats.snapshot()
        out["fallback_device_counters"] = {n: v for n, v in fb.items() if v}
    return out


def establish(
    sock: socket.socket,
    res: HandshakeResult,
    offload: Offload,
    warn: Callable[[str], None],
    device: DeviceSpec | None = None,
) -> KtlsChannel | OpenSSLChannel:
    """Hand the keys to the layer, or keep the connection in pyOpenSSL.

    ``auto`` falls back to pyOpenSSL with a warning when the suite has no
    kTLS cipher; ``sw``/``kernel`` asked for offload explicitly, so that
    is an error instead.
    """
    if offload == "none":
        return OpenSSLChannel(sock, res)
    if res.tx_info is None or res.rx_info is None:
        reason = res.unsupported_reason or f"{res.cipher_name} cannot be offloaded"
        if offload == "auto":
            warn(f"warning: {reason}; the connection stays in pyOpenSSL (--offload none)")
            return OpenSSLChannel(sock, res)
        raise ChannelError(f"--offload {offload}: {reason}")
    try:
        if offload in _BACKENDS:
            k = install_offload(sock, res, _BACKENDS[offload])
        else:  # a NIC driver: the user-space layer with TX on a simulated device
            k = install_offload(sock, res, "user", **(device or DeviceSpec()).layer_kwargs(offload))
            if k.offload_refused:
                warn(f"warning: {offload} declined TLS_TX ({k.offload_refused}); software TX")
    except LookupError as exc:
        raise ChannelError(str(exc).strip("'\"")) from None
    except HandshakeError as exc:
        raise ChannelError(str(exc)) from None
    except OSError as exc:
        raise ChannelError(f"cannot install the keys: {exc.strerror or exc}") from None
    return KtlsChannel(k, res)
