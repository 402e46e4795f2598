"""The TLS handshake in user space, and the handoff of its keys to the kTLS layer.

The kernel never runs a handshake: user space does, then gives the record
layer a key, an IV and the *exact* record sequence number of the next record
in each direction.  Getting those numbers wrong by one makes every later
record fail its tag, so this module runs pyOpenSSL over memory BIOs and
controls precisely which bytes OpenSSL sees and which records it writes:

* The peer's bytes are fed to OpenSSL **one complete record at a time** (the
  5-byte header is parsed here).  Once the handshake is complete nothing more
  is fed, so OpenSSL never reads past the handshake; whatever was already read
  from the socket stays in our buffer and goes to the layer as ciphertext
  (``KTLSSocket.inject_rx``).  This is the pitfall OpenSSL's own kTLS code has
  to work around (it refuses to hand over with a partial record buffered).
  When the real kernel takes RX it cannot be given bytes back, so there the
  records are read with exact-length reads (``exact=True``) and nothing past
  the handshake ever leaves the socket.
* Records OpenSSL writes are parsed on the way out, so the records protected
  with the application keys can be counted: a TLS 1.3 server writes its
  NewSessionTickets with them as part of ``SSL_do_handshake``, and they count
  in its TX sequence number.  A TLS 1.3 client receives those tickets after
  the handoff, so they reach the layer as ciphertext and surface as handshake
  records (type 22) that the caller reads and ignores.
* TLS 1.2: every record after a ChangeCipherSpec is under the new keys, and
  a Finished may span several records (RFC 5246 6.2.1: a handshake message
  may be fragmented over records, and some peers do).  So the records fed to
  OpenSSL after the peer's CCS are counted (RX), as are the records OpenSSL
  wrote after its own CCS (TX); those counts are the first application
  record's sequence numbers.  Usually 1 and 1, but never assumed.
* TLS 1.3 needs no such count: the Finished messages are under the
  handshake keys, so a Finished in any number of records changes nothing;
  a client stops feeding at its end (the server's tickets come later, under
  the application keys, to the layer), and a server's application-key
  records during the handshake are exactly the records of the step that
  completed it (the tickets), since the client's Finished is the last input.

Secrets come from the keylog callback for TLS 1.3 (the
``*_TRAFFIC_SECRET_0`` lines) and from the master secret and randoms for
TLS 1.2; they are kept out of every repr and error message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from OpenSSL import SSL

from offload.keys import (
    Side,
    Suite,
    UnsupportedSuiteError,
    crypto_info_tls12,
    crypto_info_tls13,
    suite_from_openssl_name,
    tls12_key_block,
)
from offload.ktls_socket import KTLSSocket
from offload.uapi import (
    SOL_TCP,
    SOL_TLS,
    TCP_ULP,
    TLS_1_2_VERSION,
    TLS_RX,
    TLS_TX,
    TLS_TX_MAX_PAYLOAD_LEN,
    ContentType,
    CryptoInfo,
)
from tlsctl.tracing import tracer_of
from tlsctl.verify import VerifyState, failure_line

__all__ = [
    "HandshakeError",
    "HandshakeResult",
    "KeylogFile",
    "RecordBuffer",
    "install_keylog",
    "install_offload",
    "run_handshake",
    "set_verify_host",
]

_HEADER = 5
# RFC 8446 5.2: a protected record is at most 2^14 + 256 bytes; TLS 1.2 allows
# 2^14 + 2048.  Anything longer is not a TLS peer speaking to us.
_MAX_RECORD_BODY = (1 << 14) + 2048
_HEARTBEAT = 24  # RFC 6520's record content type (offload.uapi.ContentType has no member)
_VALID_TYPES = frozenset(int(t) for t in ContentType) | {_HEARTBEAT}
_MAJOR = 3  # legacy_record_version is 3.x (SSL 3.0 numbering) in every TLS record
_APPDATA = int(ContentType.APPLICATION_DATA)
_CCS = int(ContentType.CHANGE_CIPHER_SPEC)
_READ = 65536

KeylogSink = Callable[[bytes], None]


class HandshakeError(Exception):
    """The handshake failed; the message is one line, safe to show a user."""


class RecordBuffer:
    """Socket bytes split into whole TLS records, header parsed here.

    Why not let OpenSSL read the socket: it would read ahead, and anything it
    buffered past the handshake would be lost to the record layer.
    """

    def __init__(self) -> None:
        self.data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk

    def missing(self) -> int:
        """Bytes still needed to complete the next header or record (>= 1)."""
        if len(self.data) < _HEADER:
            return _HEADER - len(self.data)
        return max(1, _HEADER + int.from_bytes(self.data[3:5], "big") - len(self.data))

    def next_record(self) -> bytes | None:
        """The next complete record, or None; rejects bytes that are not TLS."""
        if len(self.data) < _HEADER:
            if self.data and self.data[0] not in _VALID_TYPES:
                raise HandshakeError("peer sent bytes that are not TLS")
            return None
        ctype, major, length = self.data[0], self.data[1], int.from_bytes(self.data[3:5], "big")
        if ctype not in _VALID_TYPES or major != _MAJOR:
            raise HandshakeError("peer sent bytes that are not TLS")
        if length > _MAX_RECORD_BODY:
            raise HandshakeError(f"peer sent an oversized TLS record ({length} bytes)")
        if len(self.data) < _HEADER + length:
            return None
        rec = bytes(self.data[: _HEADER + length])
        del self.data[: _HEADER + length]
        return rec


def split_records(data: bytes) -> list[tuple[int, int]]:
    """(content type, length) of each whole record in ``data`` OpenSSL wrote."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos + _HEADER <= len(data):
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if pos + _HEADER + length > len(data):
            break  # a record not complete yet
        out.append((data[pos], length))
        pos += _HEADER + length
    return out


class _EpochCounter:
    """Records seen in one direction since its last ChangeCipherSpec.

    TLS 1.2 only: every record after a CCS is protected with the new keys
    and so uses one sequence number of the new epoch, whatever its type
    (Finished fragments, a warning alert).  ``partial`` holds the start of a
    record not complete yet (OpenSSL writes whole records, but nothing here
    relies on one drain ending at a record boundary).
    """

    def __init__(self) -> None:
        self.ccs_seen = False
        self.after_ccs = 0
        self.partial = bytearray()

    def record(self, ctype: int) -> None:
        if ctype == _CCS:
            self.ccs_seen, self.after_ccs = True, 0
        elif self.ccs_seen:
            self.after_ccs += 1

    def written(self, data: bytes) -> None:
        """Count the whole records in OpenSSL's output ``data``."""
        self.partial += data
        pos = 0
        for ctype, length in split_records(bytes(self.partial)):
            self.record(ctype)
            pos += _HEADER + length
        del self.partial[:pos]

    def next_seq(self, direction: str) -> int:
        """The sequence number of the first record after the handshake."""
        if not self.ccs_seen or self.after_ccs == 0:
            raise HandshakeError(
                f"TLS 1.2 handshake ended without a Finished {direction} under the new keys"
            )
        return self.after_ccs


class _Secrets:
    """Per-connection keylog lines, captured from OpenSSL's callback, and
    the connection's certificate verification (the verify callback records
    there which check failed: :mod:`tlsctl.verify`)."""

    def __init__(self, sink: KeylogSink | None) -> None:
        self.values: dict[str, bytes] = {}
        self.sink = sink
        self.verify = VerifyState()

    def __repr__(self) -> str:
        return f"_Secrets(labels={sorted(self.values)})"


def _keylog_callback(conn: SSL.Connection, line: bytes) -> None:
    state = conn.get_app_data()
    if not isinstance(state, _Secrets):
        return
    parts = line.split()
    if len(parts) == 3:
        with contextlib.suppress(ValueError):
            state.values[parts[0].decode()] = bytes.fromhex(parts[2].decode())
    if state.sink is not None:
        state.sink(line)


def install_keylog(ctx: SSL.Context) -> None:
    """Route the context's keylog lines to each connection's secret store.

    The callback is per context but secrets are per connection, so each
    connection carries its own :class:`_Secrets` as app data.
    """
    ctx.set_keylog_callback(_keylog_callback)


class KeylogFile:
    """Appends NSS keylog lines to a file (``-keylogfile`` / SSLKEYLOGFILE).

    Only when the user asked: this writes the session secrets to disk, so
    the file is opened the way a secret must be.  ``O_NOFOLLOW``: a symlink
    planted at the path (another user's, in /tmp) is refused, not followed
    into whatever file it names.  A new file is created 0600.  An existing
    one is appended to (``O_APPEND``: one ``write`` per line, so workers
    sharing it never interleave), with a warning when someone other than
    us can read it.  ``O_NONBLOCK`` only for the open itself: a FIFO with no
    reader fails at once instead of hanging start-up.  ``O_CLOEXEC``: no
    child process inherits it.
    """

    _FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

    def __init__(self, path: str, warn: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        try:
            fd = os.open(path, self._FLAGS, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HandshakeError(
                    f"refusing key log file {path}: it is a symbolic link; give the real path"
                ) from None
            raise HandshakeError(f"cannot open key log file {path}: {exc.strerror}") from None
        os.set_blocking(fd, True)
        st = os.fstat(fd)
        exposed = _exposure(st)
        if exposed:
            (warn or _stderr_line)(
                f"warning: key log file {path} {exposed}: "
                "whoever can read it can decrypt these sessions"
            )
        self._file = os.fdopen(fd, "ab", buffering=0)

    def __call__(self, line: bytes) -> None:
        with self._lock:
            self._file.write(line + b"\n")


def _exposure(st: os.stat_result) -> str | None:
    """Why someone other than us can read the key log file, or None.

    Regular files only: ``/dev/null`` or a pipe to a reader the user chose
    are not a file left lying around.
    """
    if not stat.S_ISREG(st.st_mode):
        return None
    if st.st_uid != os.geteuid():
        return f"belongs to another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        return f"is readable by group/others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _stderr_line(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


@dataclass(repr=False)
class HandshakeResult:
    """What the handshake produced: enough to install both kTLS directions.

    ``suite`` is None when the negotiated suite has no kTLS equivalent (the
    connection must then stay in pyOpenSSL, see ``conn``).  ``leftover`` is
    ciphertext read past the handshake; ``plaintext`` is data OpenSSL had
    already decrypted (both must reach the reader before anything else).
    """

    side: Side
    conn: SSL.Connection
    version_name: str
    cipher_name: str
    suite: Suite | None
    unsupported_reason: str | None
    tx_seq: int
    rx_seq: int
    leftover: bytes
    plaintext: bytes
    seconds: float
    tx_info: CryptoInfo | None = None
    rx_info: CryptoInfo | None = None
    tx_secret: bytes = field(default=b"")
    rx_secret: bytes = field(default=b"")
    alpn: str | None = None  # the protocol -alpn negotiated, if any

    def __repr__(self) -> str:
        return (
            f"HandshakeResult({self.side}, {self.version_name}, {self.cipher_name}, "
            f"tx_seq={self.tx_seq}, rx_seq={self.rx_seq}, leftover={len(self.leftover)}, "
            "secrets=<redacted>)"
        )

    @property
    def is_tls13(self) -> bool:
        return self.version_name == "TLSv1.3"


def _drain(conn: SSL.Connection) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = conn.bio_read(_READ)
        except SSL.WantReadError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _ssl_error_text(exc: SSL.Error) -> str:
    """One line from OpenSSL's error queue (reason strings only)."""
    parts: list[str] = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(item, tuple) and item:
            parts.append(str(item[-1]))
    return "; ".join(parts) or exc.__class__.__name__


def _recv(sock: socket.socket, deadline: float, want: int = _READ) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise HandshakeError("handshake timed out")
    sock.settimeout(left)
    try:
        return sock.recv(want)
    except TimeoutError:
        raise HandshakeError("handshake timed out") from None
    except ConnectionResetError:
        raise HandshakeError("peer reset the connection during the handshake") from None


def run_handshake(
    sock: socket.socket,
    ctx: SSL.Context,
    side: Side,
    *,
    server_name: str | None = None,
    verify_host: str | None = None,
    keylog: KeylogSink | None = None,
    timeout: float = 30.0,
    exact: bool = False,
) -> HandshakeResult:
    """Handshake on a connected ``sock``; return secrets and sequence numbers.

    ``ctx`` must have had :func:`install_keylog` applied (TLS 1.3 secrets
    arrive only through that callback).  ``server_name`` is sent as SNI;
    ``verify_host`` (a DNS name or an IP address) is checked against the
    peer certificate by OpenSSL during the handshake when the context
    verifies peers.  The socket is left blocking, with no timeout.

    ``exact``: read each record with two exact-length reads (header, then
    body) so not one byte past the handshake leaves the socket.  Needed when
    the kernel takes over RX: ciphertext already read cannot be given back
    to it.  Otherwise large reads are used and any bytes read past the
    handshake are returned in ``leftover`` for ``inject_rx``.
    """
    start = time.monotonic()
    deadline = start + timeout
    secrets = _Secrets(keylog)
    conn = SSL.Connection(ctx, None)
    conn.set_app_data(secrets)
    if side == "client":
        conn.set_connect_state()
        if server_name:
            conn.set_tlsext_host_name(server_name.encode("idna"))
        if verify_host:
            set_verify_host(conn, verify_host)
            secrets.verify.target = verify_host
    else:
        conn.set_accept_state()
    inbuf = RecordBuffer()
    tracer = tracer_of(ctx)  # -debug: the bytes on the wire
    final_records: list[tuple[int, int]] = []
    tx, rx = _EpochCounter(), _EpochCounter()
    try:
        while True:
            done = False
            try:
                conn.do_handshake()
                done = True
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                _flush_best_effort(sock, conn)
                why = failure_line(conn) or f"TLS handshake failed: {_ssl_error_text(exc)}"
                raise HandshakeError(why) from None
            out = _drain(conn)
            if out:
                tx.written(out)
                sock.sendall(out)
                if tracer is not None:
                    tracer.wire(True, out)
            if done:
                final_records = split_records(out)
                break
            rec = inbuf.next_record()
            while rec is None:
                chunk = _recv(sock, deadline, inbuf.missing() if exact else _READ)
                if not chunk:
                    raise HandshakeError("peer closed the connection during the handshake")
                inbuf.feed(chunk)
                rec = inbuf.next_record()
            rx.record(rec[0])
            if tracer is not None:
                tracer.wire(False, rec)
            conn.bio_write(rec)
    except OSError as exc:
        raise HandshakeError(f"handshake I/O error: {exc.strerror or exc}") from None
    finally:
        sock.settimeout(None)
    return _result(conn, side, secrets, inbuf, final_records, (tx, rx), time.monotonic() - start)


def _flush_best_effort(sock: socket.socket, conn: SSL.Connection) -> None:
    """Send the alert OpenSSL queued, so the peer learns why we stopped."""
    try:
        out = _drain(conn)
        if out:
            sock.sendall(out)
    except (OSError, SSL.Error):
        pass


def set_verify_host(conn: SSL.Connection, host: str) -> None:
    """Have OpenSSL check the name (or IP) in the peer certificate.

    pyOpenSSL has no wrapper for this; the binding functions are the ones
    ``SSL_set1_host`` uses internally, so failures surface as a normal
    verification error during the handshake (with the alert sent).
    """
    from OpenSSL._util import lib

    ssl_ptr = conn._ssl  # no public accessor in pyOpenSSL
    param = lib.SSL_get0_param(ssl_ptr)
    ip = _ip_bytes(host)
    if ip is not None:
        ok = lib.X509_VERIFY_PARAM_set1_ip(param, ip, len(ip))
    else:
        name = host.encode("idna")
        ok = lib.X509_VERIFY_PARAM_set1_host(param, name, len(name))
    if ok != 1:
        raise HandshakeError(f"cannot verify host name {host!r}")


def _ip_bytes(host: str) -> bytes | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, host)
        except OSError:
            continue
    return None


def _result(
    conn: SSL.Connection,
    side: Side,
    secrets: _Secrets,
    inbuf: RecordBuffer,
    final_records: list[tuple[int, int]],
    epochs: tuple[_EpochCounter, _EpochCounter],
    seconds: float,
) -> HandshakeResult:
    version_name = conn.get_protocol_version_name()
    cipher_name = conn.get_cipher_name() or "unknown"
    plaintext = b""
    if conn.pending():
        plaintext = conn.recv(conn.pending())
    suite: Suite | None
    reason: str | None = None
    try:
        suite = suite_from_openssl_name(cipher_name)
    except UnsupportedSuiteError as exc:
        suite, reason = None, str(exc).split(":")[0] + ": no kernel TLS cipher for it"
    res = HandshakeResult(
        side=side,
        conn=conn,
        version_name=version_name,
        cipher_name=cipher_name,
        suite=suite,
        unsupported_reason=reason,
        tx_seq=0,
        rx_seq=0,
        leftover=bytes(inbuf.data),
        plaintext=plaintext,
        seconds=seconds,
        alpn=conn.get_alpn_proto_negotiated().decode(errors="replace") or None,
    )
    if version_name == "TLSv1.3":
        # Client: its Finished went under the handshake keys and the server's
        # tickets have not been fed to OpenSSL, so both directions start at 0.
        # Server: the records written in the step that completed the
        # handshake are the NewSessionTickets, under the application keys.
        if side == "server":
            res.tx_seq = sum(1 for ctype, _ in final_records if ctype == _APPDATA)
        mine, theirs = ("CLIENT", "SERVER") if side == "client" else ("SERVER", "CLIENT")
        res.tx_secret = secrets.values.get(f"{mine}_TRAFFIC_SECRET_0", b"")
        res.rx_secret = secrets.values.get(f"{theirs}_TRAFFIC_SECRET_0", b"")
        if suite is not None:
            if not res.tx_secret or not res.rx_secret:
                raise HandshakeError("TLS 1.3 traffic secrets were not reported by OpenSSL")
            res.tx_info = crypto_info_tls13(res.tx_secret, suite, res.tx_seq)
            res.rx_info = crypto_info_tls13(res.rx_secret, suite, res.rx_seq)
    elif version_name == "TLSv1.2":
        tx, rx = epochs
        _set_tls12_seqs(conn, res, tx.next_seq("sent"), rx.next_seq("received"))
    else:
        res.suite = None
        res.unsupported_reason = f"{version_name} cannot be offloaded"
    return res


def _set_tls12_seqs(conn: SSL.Connection, res: HandshakeResult, tx_seq: int, rx_seq: int) -> None:
    """Sequence numbers and crypto_infos of a TLS 1.2 connection.

    ``tx_seq``/``rx_seq``: records under the new keys during the handshake
    in each direction (the Finished, in however many records it came).
    """
    res.tx_seq, res.rx_seq = tx_seq, rx_seq
    suite = res.suite
    if suite is None or suite.version != TLS_1_2_VERSION:
        return
    master, c_rand, s_rand = conn.master_key(), conn.client_random(), conn.server_random()
    if master is None or c_rand is None or s_rand is None:
        raise HandshakeError("TLS 1.2 session secrets are not available")
    keys = tls12_key_block(master, c_rand, s_rand, suite)
    peer: Side = "server" if res.side == "client" else "client"
    res.tx_info = crypto_info_tls12(keys, suite, res.side, tx_seq)
    res.rx_info = crypto_info_tls12(keys, suite, peer, rx_seq)


def install_offload(
    k: KTLSSocket, res: HandshakeResult, max_payload: int | None = None
) -> KTLSSocket:
    """Attach the ``tls`` ULP to the layer ``k``, install TLS_TX and TLS_RX,
    hand over leftovers; returns ``k``.

    ``max_payload`` (-max_send_frag) is set as ``TLS_TX_MAX_PAYLOAD_LEN``
    between the ULP and TLS_TX, so the first record already follows it; a
    kernel before 6.19 has no such option and the handoff fails with why.

    The order is Linux's (ULP, TX, RX) and ciphertext read past the
    handshake is injected after RX is set, so the first ``recv`` decrypts
    it with the right sequence number.  ``k`` comes from
    :func:`tlsctl.offloadmode.open_layer` (which builds the layer for an
    ``--offload`` mode, NIC included).
    """
    if res.tx_info is None or res.rx_info is None:
        raise HandshakeError(res.unsupported_reason or "no keys to offload")
    k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
    if max_payload is not None:
        _set_max_payload(k, max_payload)
    k.setsockopt(SOL_TLS, TLS_TX, res.tx_info.pack())
    k.setsockopt(SOL_TLS, TLS_RX, res.rx_info.pack())
    if res.leftover:
        if k.backend == "kernel":
            raise HandshakeError(
                "peer sent data before the keys were installed; the kernel backend "
                "cannot take already-read ciphertext"
            )
        k.inject_rx(res.leftover)
    if res.plaintext:
        k.inject_rx_plaintext(res.plaintext)
    return k


def _set_max_payload(k: KTLSSocket, value: int) -> None:
    try:
        k.setsockopt(SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN, value.to_bytes(2, "little"))
    except OSError as exc:
        if exc.errno == errno.ENOPROTOOPT:
            raise HandshakeError(
                f"-max_send_frag: the kernel {os.uname().release} has no "
                "TLS_TX_MAX_PAYLOAD_LEN (Linux 6.19+); use --offload sw"
            ) from None
        raise HandshakeError(f"-max_send_frag {value}: {os.strerror(exc.errno or 0)}") from None
