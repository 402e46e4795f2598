"""tlslite-ng as a scriptable TLS peer, run as its own process by the tests.

tlslite-ng is an independent, pure-Python TLS stack whose record layer can be
bent in ways OpenSSL's cannot: here it sends its **Finished message split
over N records** (legal: RFC 5246 6.2.1 and RFC 8446 5.1 let a handshake
message span records), which is what a handoff that assumes "Finished was
one record" gets wrong.  Everything else (key exchange, record protection,
close_notify) is tlslite-ng's own.

Usage (one line of JSON on stdout when the connection is done)::

    python tests/helpers/tlslite_peer.py server PORT --cert C --key K --out FILE [opts]
    python tests/helpers/tlslite_peer.py client PORT --in FILE [--resume] [opts]
    opts: --version 1.2|1.3 --cipher NAME --finished-records N

``--cipher`` takes tlslite-ng's names (``aes128gcm``, ``aes256gcm``,
``chacha20-poly1305``).  ``--resume`` makes a second connection that resumes
the first one's session (abbreviated TLS 1.2 handshake, where the client's
Finished is the last flight), sending the file on each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
from collections.abc import Iterator
from typing import Any

from tlslite import (  # type: ignore[import-untyped]
    HandshakeSettings,
    TLSConnection,
    X509CertChain,
    parsePEMKey,
)
from tlslite.constants import (  # type: ignore[import-untyped]
    AlertDescription,
    AlertLevel,
    ContentType,
    HandshakeType,
)
from tlslite.messages import Alert, Message  # type: ignore[import-untyped]

_VERSIONS = {"1.2": (3, 3), "1.3": (3, 4)}
_HS_HEADER = 4  # handshake message: type (1) + length (3)


def _finished_offset(buf: bytes) -> int | None:
    """Where a Finished message starts in a run of handshake messages."""
    pos = 0
    while pos + _HS_HEADER <= len(buf):
        if buf[pos] == HandshakeType.finished:
            return pos
        pos += _HS_HEADER + int.from_bytes(buf[pos + 1 : pos + 4], "big")
    return None


def _pieces(data: bytes, n: int) -> list[bytes]:
    """``data`` cut into ``n`` non-empty pieces (fewer if it is shorter)."""
    n = max(1, min(n, len(data)))
    step, extra = divmod(len(data), n)
    out, pos = [], 0
    for i in range(n):
        size = step + (1 if i < extra else 0)
        out.append(data[pos : pos + size])
        pos += size
    return out


class FragmentingConnection(TLSConnection):  # type: ignore[misc]
    """A TLSConnection that sends its Finished in ``finished_records`` records.

    Every handshake message goes through ``_sendMsg`` (a flight queued for
    coalescing arrives as one buffer), so the Finished is found there and
    handed back to tlslite-ng's own ``_sendMsg`` piece by piece; each piece
    is a record of its own.  The handshake transcript hash is updated per
    piece, which hashes the same bytes as the whole message would.
    """

    finished_records = 1
    finished_sent = 0  # records that carried (part of) our Finished, for the report

    def _sendMsg(
        self, msg: Any, randomizeFirstBlock: bool = True, update_hashes: bool = True
    ) -> Iterator[Any]:
        buf = bytes(msg.write())
        at = _finished_offset(buf) if msg.contentType == ContentType.handshake else None
        if at is None:
            yield from super()._sendMsg(msg, randomizeFirstBlock, update_hashes)
            return
        if at:
            head = Message(ContentType.handshake, bytearray(buf[:at]))
            yield from super()._sendMsg(head, randomizeFirstBlock, update_hashes)
        for part in _pieces(buf[at:], self.finished_records):
            frag = Message(ContentType.handshake, bytearray(part))
            yield from super()._sendMsg(frag, randomizeFirstBlock, update_hashes)
            self.finished_sent += 1


def _settings(args: argparse.Namespace) -> Any:
    s = HandshakeSettings()
    s.minVersion = s.maxVersion = _VERSIONS[args.version]
    if args.cipher:
        s.cipherNames = [args.cipher]
    return s


def _connection(sock: socket.socket, args: argparse.Namespace) -> Any:
    conn = FragmentingConnection(sock)
    conn.finished_records = args.finished_records
    conn.closeSocket = False  # close() waits for the peer's close_notify
    return conn


def _report(conn: Any, **extra: Any) -> dict[str, Any]:
    """What was negotiated; taken right after the handshake (closing resets it)."""
    return {
        "version": ".".join(map(str, conn.version)),
        "cipher": conn.getCipherName(),
        "resumed": bool(conn.resumed),
        "finished_records": conn.finished_sent,
        **extra,
    }


def _close_and_drain(conn: Any) -> None:
    """Our close_notify, then read to the peer's: tlslite-ng's own close()
    would take a TLS 1.3 NewSessionTicket still in flight for an error."""
    alert = Alert().create(AlertDescription.close_notify, AlertLevel.warning)
    for _ in conn._sendMsg(alert):
        pass
    if conn.read():
        raise RuntimeError("the peer sent application data to an uploading client")


def serve(args: argparse.Namespace) -> list[dict[str, Any]]:
    with open(args.cert) as f:
        chain = X509CertChain()
        chain.parsePemList(f.read())
    with open(args.key) as f:
        key = parsePEMKey(f.read(), private=True)
    with socket.create_server(("127.0.0.1", args.port)) as lst:
        sock, _ = lst.accept()
    conn = _connection(sock, args)
    conn.handshakeServer(certChain=chain, privateKey=key, settings=_settings(args))
    report = _report(conn)
    h = hashlib.sha256()
    total = 0
    with open(args.out, "wb") as out:
        while chunk := conn.read():
            out.write(chunk)
            h.update(chunk)
            total += len(chunk)
    report.update(bytes=total, sha256=h.hexdigest())
    conn.close()
    sock.close()
    return [report]


def client(args: argparse.Namespace) -> list[dict[str, Any]]:
    with open(args.infile, "rb") as f:
        data = f.read()
    reports = []
    session = None
    for _ in range(2 if args.resume else 1):
        sock = socket.create_connection(("127.0.0.1", args.port))
        conn = _connection(sock, args)
        conn.handshakeClientCert(settings=_settings(args), session=session)
        conn.sendall(data)
        reports.append(_report(conn, bytes=len(data)))
        _close_and_drain(conn)
        sock.close()
        session = conn.session
    return reports


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tlslite_peer")
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("port", type=int)
    p.add_argument("--version", choices=sorted(_VERSIONS), default="1.2")
    p.add_argument("--cipher")
    p.add_argument("--finished-records", type=int, default=1)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--out")
    p.add_argument("--in", dest="infile")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    try:
        reports = serve(args) if args.role == "server" else client(args)
    except Exception as exc:  # one line for the test's failure message
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    for r in reports:
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
