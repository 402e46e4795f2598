"""``tlsctl serve -WWW DIR``: a small static file server over the kTLS layer.

HTTP/1.0 and 1.1 are parsed and framed by h11 (sans-I/O); this module does
the I/O and the file system:

* GET and HEAD (HEAD: the same headers, no body); other standard methods
  405, unknown ones 501, a malformed request 400, a header section over
  ``MAX_HEAD`` bytes 431.  Every error response says ``Connection: close``
  and the connection then ends with our close_notify, never a bare close.
* HTTP/1.1 keep-alive and pipelining: requests are answered in order on one
  connection until the client closes, asks for ``Connection: close``, or
  stays idle past the connection's timeout (``serve --timeout``).
* Files are opened race-free under DIR: component by component with
  ``openat(O_PATH|O_NOFOLLOW)`` from a descriptor of DIR taken at start-up,
  so neither ``..`` nor a symlink (swapped in at any moment) can lead
  outside DIR.  Symlinks are not served at all, even ones that point inside
  DIR (403): telling a safe one from an unsafe one needs the very path walk
  that races.  Only regular files are read: a FIFO, socket or device is
  looked at through an ``O_PATH`` descriptor (opening it could block or act
  on the device) and refused with 403.  A directory serves its
  ``index.html`` under the same rules.
* The response header is sent with MSG_MORE and the body with the layer's
  sendfile, so the header and the start of the body share a record (a small
  file is one record), as nginx does over kTLS.
"""

from __future__ import annotations

import email.utils
import errno
import http
import mimetypes
import os
import stat
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, cast

import h11

from tlsctl.server.handlers import Chan
from tlsctl.session.channel import ChannelTimeout, LocalError, PeerError
from tlsctl.tlsconf import ConfigError

MAX_HEAD = 32 * 1024
"""Largest request header section accepted (h11's buffer for one incomplete
event); more is answered with 431.  nginx's default is 4 x 8 KiB buffers."""
MAX_REQUESTS = 1000
"""Requests on one connection before we close it (nginx's keepalive_requests)."""
MAX_DISCARD = 64 * 1024
"""Request body bytes read and dropped (a GET may carry one); more: 413."""
_RECV = 64 * 1024
_SERVER = b"tlsctl"
_ALLOWED = (b"GET", b"HEAD")
# RFC 9110 9.1 / RFC 5789: methods we know and refuse with 405 (others: 501).
_KNOWN = {b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"}
_INDEX = b"index.html"
_LOG_REQUESTS = 8  # requests named in the one log line (--json lists them all)
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Refused(Exception):
    """A request answered with an error status instead of a file."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class Opened:
    """A regular file under DIR, open for reading, and its fstat."""

    fd: int
    st: os.stat_result
    name: str


def split_target(target: bytes) -> list[bytes]:
    """The path components of a request target, percent-decoded, as bytes.

    Origin form (``/a/b?q``) and absolute form (``https://h/a/b``) are
    accepted (RFC 9112 3.2).  Empty and ``.`` components are dropped; ``..``
    or a NUL is refused (403 / 400) rather than resolved.
    """
    path = urllib.parse.urlsplit(target).path
    if not path.startswith(b"/"):
        raise Refused(400)
    parts = []
    for raw in path.split(b"/"):
        name = urllib.parse.unquote_to_bytes(raw)
        if b"\0" in name:
            raise Refused(400)
        if b"/" in name or name == b"..":  # %2F or a parent: never outside DIR
            raise Refused(403)
        if name not in (b"", b"."):
            parts.append(name)
    return parts


def _refusal(exc: OSError) -> Refused:
    """errno of a path step -> status: a symlink (ELOOP, or ENOTDIR for a
    link where a directory was expected) or no permission 403, a missing
    name 404, out of descriptors 503."""
    if exc.errno in (errno.ELOOP, errno.EACCES, errno.EPERM):
        return Refused(403)
    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return Refused(503)
    return Refused(404)


def open_under(root_fd: int, parts: list[bytes]) -> Opened:
    """Open ``parts`` under the directory ``root_fd`` without following any
    symlink and without opening anything but a regular file for reading.

    Each step is ``openat(O_PATH|O_NOFOLLOW)`` on the previous descriptor
    (an ``O_PATH`` open has no side effect on a FIFO or device).  The final
    regular file is then opened for reading by name, ``O_NOFOLLOW|O_NONBLOCK``,
    and must be the same inode the ``O_PATH`` step saw: a swap between the
    two steps gives 404, never another file.  Linux's openat2
    ``RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS`` does this in one call; Python has
    no binding for it.
    """
    fds: list[int] = []
    try:
        cur, name = root_fd, b""
        names = list(parts)
        while True:
            if not names:  # a directory: its index.html, under the same rules
                if name == _INDEX:
                    raise Refused(404)
                names.append(_INDEX)
            name = names.pop(0)
            try:
                fd = os.open(name, _PATH_FLAGS, dir_fd=cur)
            except OSError as exc:
                raise _refusal(exc) from None
            fds.append(fd)
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                cur = fd
                continue
            if not stat.S_ISREG(st.st_mode) or names:  # symlink, FIFO, device ...
                raise Refused(403 if not stat.S_ISREG(st.st_mode) else 404)
            return Opened(_reopen(cur, name, st), st, os.fsdecode(name))
    finally:
        for fd in fds:
            os.close(fd)


def _reopen(dir_fd: int, name: bytes, seen: os.stat_result) -> int:
    """Open ``name`` for reading; it must still be the inode ``seen``."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _refusal(exc) from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino) or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Refused(404)
    return fd


class _FileBody:
    """A body of ``n`` bytes that goes out by sendfile: h11's documented
    ``send_with_data_passthrough`` only needs its length for the framing."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _text(b: bytes, limit: int = 200) -> str:
    """A request field for the log: ASCII, escapes for anything else, cut."""
    s = b.decode("ascii", "backslashreplace")
    return s if len(s) <= limit else s[:limit] + "..."


@dataclass
class _Conn:
    """One connection: the h11 state machine, the channel, what was served."""

    chan: Chan
    h: h11.Connection = field(
        default_factory=lambda: h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    )
    requests: list[dict[str, Any]] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    eof: bool = False
    pending: bytearray = field(default_factory=bytearray)  # received, not yet given to h11

    def next_event(self, idle: bool) -> Any:
        """The next h11 event, reading as needed.  A timeout before the first
        byte of a request ends a kept-alive connection quietly (None); during
        a request it is a 408.

        h11 enforces its size limit only on an event still incomplete, so a
        40 KiB header section that arrives at once would pass; it is fed at
        most ``MAX_HEAD + 1`` unparsed bytes, so a longer head always meets
        the limit (431).
        """
        while True:
            event = self.h.next_event()
            if event is not h11.NEED_DATA:
                return event
            if not self.pending:
                try:
                    data = self.chan.recv(_RECV)
                except (ChannelTimeout, TimeoutError):
                    if idle and not self.h.trailing_data[0]:
                        return None
                    raise Refused(408) from None
                self.bytes_in += len(data)
                if not data:
                    self.eof = True
                    self.h.receive_data(b"")
                    continue
                self.pending += data
            room = MAX_HEAD + 1 - len(self.h.trailing_data[0])
            self.h.receive_data(bytes(self.pending[:room]))
            del self.pending[:room]

    def send(self, data: bytes, more: bool = False) -> None:
        self.chan.send_all(data, more=more)
        self.bytes_out += len(data)

    def respond_error(
        self, status: int, method: bytes = b"", target: bytes = b"", close: bool = True
    ) -> None:
        """A short text response, closing the connection unless ``close`` is
        False (a 403/404 to a good request); nothing if h11 no longer lets us
        start a response (one has begun)."""
        if self.h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        phrase = http.HTTPStatus(status).phrase
        body = f"{status} {phrase}\n".encode()
        headers = [
            *_common_headers(),
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
        ]
        if close:
            headers.append((b"Connection", b"close"))
        if status == 405:
            headers.append((b"Allow", b"GET, HEAD"))
        out = self.h.send(h11.Response(status_code=status, headers=headers, reason=phrase.encode()))
        if method != b"HEAD":  # HEAD: the same headers, no body
            out += self.h.send(h11.Data(data=body))
        self.send(out + self.h.send(h11.EndOfMessage()))
        self.log(method, target, status, 0)

    def log(self, method: bytes, target: bytes, status: int, body: int) -> None:
        self.requests.append(
            {"method": _text(method, 16), "target": _text(target), "status": status, "bytes": body}
        )


def _common_headers() -> list[tuple[bytes, bytes]]:
    return [(b"Server", _SERVER), (b"Date", email.utils.formatdate(usegmt=True).encode())]


class Www:
    """``-WWW DIR`` handler: a function of the channel, like the other modes.

    DIR is opened once here (an ``O_PATH`` descriptor kept for the life of
    the process): renaming or replacing DIR later does not change what is
    served, and every lookup starts from that descriptor.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        try:
            self.root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"-WWW {root}: {exc.strerror or exc}") from None
        mimetypes.init()  # read the system tables once, not in racing threads

    def __call__(self, chan: Chan, _conn_id: int) -> dict[str, Any]:
        c = _Conn(chan)
        try:
            self._serve(c)
        except Refused as r:  # a timeout in the middle of a request
            c.respond_error(r.status)
        except h11.RemoteProtocolError as exc:
            if c.eof:
                chan.close_notify()
                raise PeerError(
                    "peer closed the connection in the middle of an HTTP request"
                ) from None
            c.respond_error(exc.error_status_hint)
        return {
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
            "requests": c.requests,
            "http": _summary(c.requests),
        }

    def _serve(self, c: _Conn) -> None:
        """Requests in order until one side wants the connection closed."""
        for _ in range(MAX_REQUESTS):
            event = c.next_event(idle=True)
            if event is None or isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                raise h11.RemoteProtocolError("unexpected event", error_status_hint=400)
            self._request(c, event, last=len(c.requests) + 1 >= MAX_REQUESTS)
            if c.h.our_state is not h11.DONE or c.h.their_state is not h11.DONE:
                return  # we or the client asked to close (h11: MUST_CLOSE)
            c.h.start_next_cycle()

    def _request(self, c: _Conn, req: h11.Request, last: bool) -> None:
        method, target = bytes(req.method), bytes(req.target)
        if _refused(c, req, method, target):
            return
        try:
            opened = open_under(self.root_fd, split_target(target))
        except Refused as r:  # 403/404: the connection goes on; 400/503 close it
            c.respond_error(r.status, method, target, close=last or r.status in (400, 503))
            return
        try:
            self._send_file(c, opened, method, target, last)
        finally:
            os.close(opened.fd)

    @staticmethod
    def _send_file(c: _Conn, f: Opened, method: bytes, target: bytes, last: bool) -> None:
        size = f.st.st_size
        ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        headers = [
            *_common_headers(),
            (b"Content-Type", ctype.encode()),
            (b"Content-Length", str(size).encode()),
            (b"Last-Modified", email.utils.formatdate(f.st.st_mtime, usegmt=True).encode()),
        ]
        if last:
            headers.append((b"Connection", b"close"))
        head = c.h.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
        sent = 0
        if method == b"HEAD" or size == 0:
            c.send(head)
        else:
            c.send(head, more=True)  # the body's first bytes join this record
            c.h.send_with_data_passthrough(h11.Data(data=cast(bytes, _FileBody(size))))
            with open(f.fd, "rb", buffering=0, closefd=False) as fobj:
                sent = c.chan.send_file(fobj, 0, size)
            c.bytes_out += sent
            if sent != size:  # the file shrank: the promised length cannot be kept
                c.log(method, target, 200, sent)
                raise LocalError(
                    f"{f.name} changed while being sent ({sent} of {size} bytes); connection cut"
                )
        c.h.send(h11.EndOfMessage())
        c.log(method, target, 200, sent)


def _refused(c: _Conn, req: h11.Request, method: bytes, target: bytes) -> bool:
    """Answer what neither handler serves (HTTP version, method, a body
    too big to discard) with its error status; True when it did."""
    if req.http_version not in (b"1.0", b"1.1"):
        c.respond_error(505, method, target)
    elif method not in _ALLOWED:
        c.respond_error(405 if method in _KNOWN else 501, method, target)
    elif not _discard_body(c):
        c.respond_error(413, method, target)
    else:
        return False
    return True


def _discard_body(c: _Conn) -> bool:
    """Read a request's body (a GET may have one) up to EndOfMessage, at
    most ``MAX_DISCARD`` bytes; False if it is longer."""
    dropped = 0
    while True:
        event = c.next_event(idle=False)
        if isinstance(event, h11.EndOfMessage):
            return True
        if isinstance(event, h11.Data):
            dropped += len(event.data)
            if dropped > MAX_DISCARD:
                return False
        elif isinstance(event, h11.ConnectionClosed):
            raise h11.RemoteProtocolError("peer closed in a request body")


def _summary(requests: list[dict[str, Any]]) -> str:
    """``GET /a 200, HEAD /b 404`` for the one log line."""
    if not requests:
        return "no request"
    parts = [
        f"{r['method']} {r['target']} {r['status']}"
        if r["method"]
        else f"(malformed request) {r['status']}"
        for r in requests[:_LOG_REQUESTS]
    ]
    if len(requests) > _LOG_REQUESTS:
        parts.append(f"and {len(requests) - _LOG_REQUESTS} more")
    return ", ".join(parts)


class StatusPage(Www):
    """``serve -www``: OpenSSL's status page, not files (that is ``-WWW``).

    ``s_server -www`` answers a GET with an HTML page about the connection
    it came on (protocol, cipher, session); this one adds what the kTLS
    layer knows: the offload in use, the record sequence numbers at the
    handoff and now (read back with ``getsockopt``, as Linux offers them),
    the bytes and control records this connection has seen and the layer's
    ``tls_stat`` counters (and a NIC's).  GET and HEAD, any path, keep-alive
    as for ``-WWW``; the page is made when the request is answered, so the
    TX number is that of the record that carries it.
    """

    def __init__(self) -> None:  # no directory: the page is made, not read
        self.root = ""
        self.root_fd = -1

    def _request(self, c: _Conn, req: h11.Request, last: bool) -> None:
        method, target = bytes(req.method), bytes(req.target)
        if _refused(c, req, method, target):
            return
        body = status_html(c).encode()
        headers = [
            *_common_headers(),
            (b"Content-Type", b"text/html; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Cache-Control", b"no-store"),
        ]
        if last:
            headers.append((b"Connection", b"close"))
        out = c.h.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
        if method != b"HEAD":
            out += c.h.send(h11.Data(data=body))
        c.send(out + c.h.send(h11.EndOfMessage()))
        c.log(method, target, 200, 0 if method == b"HEAD" else len(body))


def status_facts(c: _Conn) -> dict[str, Any]:
    """What the page shows, as ``name: value`` (the page is these, escaped)."""
    from OpenSSL._util import lib  # SSL_session_reused: no pyOpenSSL wrapper

    from tlsctl.offloadmode import device_report
    from tlsctl.peerinfo import oneline
    from tlsctl.session.channel import KtlsChannel

    chan, res = c.chan, c.chan.res
    conn = res.conn
    peer = conn.get_peer_certificate(as_cryptography=True)
    facts: dict[str, Any] = {
        "Protocol": res.version_name,
        "Cipher": res.cipher_name,
        "ALPN protocol": res.alpn or "none",
        "Session": "reused" if lib.SSL_session_reused(conn._ssl) else "new",
        "Client certificate": oneline(peer.subject) if peer is not None else "none",
        "Offload": chan.offload,
        "TX sequence number at handoff": res.tx_seq,
        "RX sequence number at handoff": res.rx_seq,
    }
    if isinstance(chan, KtlsChannel):
        tx, rx = chan.live_seqs()
        facts["TX sequence number now (this page's record)"] = tx
        facts["RX sequence number now (next record)"] = rx
        facts["Key updates sent"] = chan.key_updates_sent
        facts["Key updates received"] = chan.key_updates
        facts["Session tickets ignored"] = chan.tickets
    facts["Bytes received on this connection"] = c.bytes_in
    facts["Bytes sent on this connection (before this page)"] = c.bytes_out
    facts["Requests before this one"] = len(c.requests)
    if isinstance(chan, KtlsChannel):
        facts["Layer counters (tls_stat)"] = {n: v for n, v in chan.k.stats.items() if v}
        facts.update(device_report(chan.k))
    return facts


def status_html(c: _Conn) -> str:
    """The page: ``s_server -www``'s ``<pre>`` of lines, one fact a line."""
    import html

    lines = []
    for name, value in status_facts(c).items():
        if isinstance(value, dict):
            lines.append(f"{name}:")
            lines += [f"    {k}: {v}" for k, v in value.items()] or ["    (none)"]
        else:
            lines.append(f"{name}: {value}")
    text = html.escape("\n".join(lines))
    return (
        "<html><head><title>tlsctl serve -www</title></head><body>\n"
        f"<pre>\ntlsctl serve -www: this connection\n\n{text}\n</pre>\n</body></html>\n"
    )
