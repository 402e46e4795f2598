"""``-msg``, ``-debug`` and ``-state``: the protocol as ``openssl s_client`` shows it.

During the handshake OpenSSL itself reports every message through
``SSL_CTX_set_msg_callback`` (pyOpenSSL has no wrapper; the binding from
``cryptography`` has the function, as for ``set_verify_host``), so the
lines are OpenSSL's: ``>>> TLS 1.3, Handshake [length 012d], ClientHello``
with the message in hex below, record headers and TLS 1.3 inner content
types included, in the format of ``apps/lib/s_cb.c``'s ``msg_cb``.  The
state lines (``SSL_connect:SSLv3/TLS write client hello``) come from the
info callback, as ``apps_ssl_info_callback`` prints them.

After the handoff OpenSSL sees nothing: the record layer writes and reads
the records.  Then :class:`TapSocket` stands in for the TCP socket under the
layer and prints the header of every record that crosses it (``-debug``:
the whole record in hex), and the channel reports the inner content of the
control records it sends and reads (alerts, KeyUpdate, tickets), which the
wire shows only encrypted in TLS 1.3.  The tap is put in only when tracing
is on: the data path without ``-msg`` is the plain socket.  With ``--offload
kernel`` the kernel frames the records and the socket carries plaintext:
nothing is shown after the handoff but the control records.

The :class:`Tracer` rides on the ``SSL.Context`` it was installed on
(:func:`tracer_of`), so a connection made from that context finds it
without more parameters through the handshake and the channel.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL

from offload.uapi import ContentType
from tlsctl.session.codes import AlertDescription, AlertLevel, HandshakeType

__all__ = ["TapSocket", "Tracer", "hexdump", "tracer_of"]

Writer = Callable[[str], None]
"""Takes one block of lines (ending in a newline) and writes it whole."""

_HEADER = 5
_RT_HEADER = 256  # SSL3_RT_HEADER: the msg callback's record header
_RT_INNER_CONTENT_TYPE = 257  # SSL3_RT_INNER_CONTENT_TYPE: TLS 1.3's real type
_VERSIONS = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2"}
_VERSIONS[0x0304] = "TLS 1.3"
_ATTR = "_tlsctl_tracer"

# SSL_CB_* (ssl.h): where the info callback is called from.
_CB_LOOP = 0x01
_CB_EXIT = 0x02
_CB_READ = 0x04
_CB_WRITE = 0x08
_CB_ALERT = 0x4000
_ST_CONNECT = 0x1000
_ST_ACCEPT = 0x2000


def _camel(name: str) -> str:
    """``CLIENT_HELLO`` -> ``ClientHello``, as s_cb.c's table spells them."""
    return "".join(part.capitalize() for part in name.split("_"))


def _content(content_type: int, data: bytes) -> tuple[str, str]:
    """``, Handshake [...], ClientHello``'s words after the version (s_cb.c)."""
    if content_type == ContentType.CHANGE_CIPHER_SPEC:
        return ", ChangeCipherSpec", ""
    if content_type == ContentType.ALERT:
        if len(data) != 2:
            return ", Alert", ", ???"
        try:
            level = f", {AlertLevel(data[0]).name.lower()}"
        except ValueError:
            level = ", ???"
        try:
            what = f" {AlertDescription(data[1]).name.lower()}"
        except ValueError:
            what = " ???"
        return ", Alert", level + what
    if content_type == ContentType.HANDSHAKE:
        try:
            return ", Handshake", f", {_camel(HandshakeType(data[0]).name)}" if data else "???"
        except ValueError:
            return ", Handshake", "???"
    if content_type == ContentType.APPLICATION_DATA:
        return ", ApplicationData", ""
    if content_type == _RT_HEADER:
        return ", RecordHeader", ""
    if content_type == _RT_INNER_CONTENT_TYPE:
        return ", InnerContent", ""
    return f", Unknown (content_type={content_type})", ""


def msg_lines(sent: bool, version: int, content_type: int, data: bytes) -> str:
    """One message as ``s_client -msg`` prints it: the line, then its bytes in hex."""
    name = _VERSIONS.get(version)
    arrow = ">>>" if sent else "<<<"
    if name is None:
        head = f"{arrow} ??? [length {len(data):04x}]"
    else:
        kind, details = _content(content_type, data)
        head = f"{arrow} {name}{kind} [length {len(data):04x}]{details}"
    rows = [" ".join(f"{b:02x}" for b in data[i : i + 16]) for i in range(0, len(data), 16)]
    body = "".join(f"    {row}\n" for row in rows)
    return f"{head}\n{body}"


def hexdump(data: bytes) -> str:
    """``BIO_dump``'s layout (what ``s_client -debug`` prints): offset, 16
    bytes in hex with a dash after the eighth, the printable ASCII."""
    out = []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        cells = [f"{b:02x}" for b in chunk]
        left, right = " ".join(cells[:8]), " ".join(cells[8:])
        hexpart = f"{left}-{right}" if right else left
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out.append(f"{i:04x} - {hexpart:<47}   {text}\n")
    return "".join(out)


class Tracer:
    """Where ``-msg``/``-debug`` lines (``msg``) and ``-state`` lines
    (``state``) go; None: that kind is off.  ``hex``: ``-debug``'s dump of
    every record on the wire."""

    def __init__(self, msg: Writer | None, state: Writer | None, hex: bool = False) -> None:
        self.msg = msg
        self.state = state
        self.hex = hex and msg is not None
        self._callbacks: list[Any] = []  # cffi callbacks must outlive the context

    # -- the handshake: OpenSSL's callbacks ----------------------------------

    def install(self, ctx: SSL.Context) -> None:
        """Put the callbacks on ``ctx`` and the tracer beside them."""
        setattr(ctx, _ATTR, self)
        if self.state is not None:
            ctx.set_info_callback(self._info)
        if self.msg is not None:
            from OpenSSL._util import ffi, lib  # no pyOpenSSL wrapper for the msg callback

            @ffi.callback("void(int, int, int, const void *, size_t, SSL *, void *)")  # type: ignore[untyped-decorator]
            def on_msg(
                write_p: int, version: int, ctype: int, buf: Any, n: int, _s: Any, _a: Any
            ) -> None:
                # Never let tracing break a handshake.
                with contextlib.suppress(Exception):
                    self.message(bool(write_p), version, ctype, bytes(ffi.buffer(buf, n)))

            self._callbacks.append(on_msg)
            lib.SSL_CTX_set_msg_callback(ctx._context, on_msg)

    def message(self, sent: bool, version: int, content_type: int, data: bytes) -> None:
        if self.msg is not None:
            self.msg(msg_lines(sent, version, content_type, data))

    def _info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        """``apps_ssl_info_callback``'s lines."""
        if self.state is None:
            return
        side = (
            "SSL_connect"
            if where & _ST_CONNECT
            else "SSL_accept"
            if where & _ST_ACCEPT
            else "undefined"
        )
        state = conn.get_state_string().decode(errors="replace")
        if where & _CB_LOOP:
            self.state(f"{side}:{state}\n")
        elif where & _CB_ALERT:
            way = "read" if where & _CB_READ else "write"
            level = {1: "warning", 2: "fatal"}.get(ret >> 8, "unknown")
            try:
                desc = AlertDescription(ret & 0xFF).name.lower().replace("_", " ")
            except ValueError:
                desc = "unknown"
            self.state(f"SSL3 alert {way}:{level}:{desc}\n")
        elif where & _CB_EXIT and ret == 0:
            # ret < 0 (s_client's "error in") is only "want read" over our memory
            # BIOs, as with s_client -nbio: not shown.
            self.state(f"{side}:failed in {state}\n")

    def wire(self, sent: bool, data: bytes) -> None:
        """-debug during the handshake: the bytes written to / read from the socket."""
        if self.hex and self.msg is not None and data:
            way = "write to" if sent else "read from"
            self.msg(f"{way} socket ({len(data)} bytes)\n{hexdump(data)}")

    # -- after the handoff -----------------------------------------------------

    def record(self, sent: bool, record: bytes) -> None:
        """A whole record the layer wrote or read: its header (as -msg prints
        one), and with -debug the whole record."""
        if self.msg is None:
            return
        version = int.from_bytes(record[1:3], "big")
        text = msg_lines(sent, version, _RT_HEADER, record[:_HEADER])
        if self.hex:
            text += hexdump(record)
        self.msg(text)

    def inner(self, sent: bool, version_name: str, content_type: int, data: bytes) -> None:
        """A control record's content, as the channel sent or read it."""
        version = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}.get(version_name, 0)
        self.message(sent, version, content_type, data)


def tracer_of(ctx: SSL.Context) -> Tracer | None:
    """The tracer installed on ``ctx``, if any."""
    found = getattr(ctx, _ATTR, None)
    return found if isinstance(found, Tracer) else None


class _Records:
    """A byte stream cut into whole records (the header gives each length)."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self.buf = bytearray()
        self.sink = sink
        self.lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        with self.lock:
            self.buf += data
            while len(self.buf) >= _HEADER:
                end = _HEADER + int.from_bytes(self.buf[3:5], "big")
                if len(self.buf) < end:
                    return
                record = bytes(self.buf[:end])
                del self.buf[:end]
                self.sink(record)


class TapSocket(socket.socket):
    """The TCP socket under the record layer, with every record that crosses
    it shown (``-msg`` after the handoff).

    A second descriptor of the same socket (``dup``): the caller's socket
    object keeps working for ``shutdown`` (serve's stop cuts connections
    through it), and :meth:`close` closes both.  ``sendfile`` goes through
    ``send`` so the bytes are seen (only when tracing: the tap is not used
    otherwise).
    """

    def __init__(self, original: socket.socket, tracer: Tracer) -> None:
        super().__init__(original.family, original.type, original.proto, original.dup().detach())
        self.settimeout(original.gettimeout())
        self._original = original
        self.shown = True  # False under the kernel's kTLS: the bytes here are plaintext
        self._out = _Records(lambda r: tracer.record(True, r))
        self._in = _Records(lambda r: tracer.record(False, r))

    def _seen_out(self, data: Any, n: int) -> int:
        if self.shown:
            self._out.feed(bytes(memoryview(data).cast("B")[:n]))
        return n

    def _seen_in(self, data: bytes) -> None:
        if self.shown:
            self._in.feed(data)

    def send(self, data: Any, flags: int = 0) -> int:
        return self._seen_out(data, super().send(data, flags))

    def sendall(self, data: Any, flags: int = 0) -> None:
        super().sendall(data, flags)
        self._seen_out(data, len(memoryview(data).cast("B")))

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        bufs = [bytes(memoryview(b).cast("B")) for b in buffers]
        n = super().sendmsg(bufs, *args)
        return self._seen_out(b"".join(bufs), n)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        if not self.shown:
            return super().sendfile(file, offset, count)
        return self._sendfile_use_send(file, offset, count)  # type: ignore[attr-defined,no-any-return]

    def recv(self, n: int, flags: int = 0) -> bytes:
        data = super().recv(n, flags)
        if not flags & socket.MSG_PEEK:
            self._seen_in(data)
        return data

    def recv_into(self, buf: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = super().recv_into(buf, nbytes, flags)
        if not flags & socket.MSG_PEEK:
            self._seen_in(bytes(memoryview(buf).cast("B")[:n]))
        return n

    def recvmsg(self, *args: Any) -> Any:
        data, anc, flags, addr = super().recvmsg(*args)
        self._seen_in(data)
        return data, anc, flags, addr

    def recvmsg_into(self, buffers: Any, *args: Any) -> Any:
        n, anc, flags, addr = super().recvmsg_into(buffers, *args)
        left, seen = n, bytearray()
        for b in buffers:
            mv = memoryview(b).cast("B")
            take = min(left, len(mv))
            seen += mv[:take]
            left -= take
        self._seen_in(bytes(seen))
        return n, anc, flags, addr

    def close(self) -> None:
        super().close()
        self._original.close()

    def release(self) -> None:
        """Close this descriptor only (the layer was never built on it)."""
        super().close()
