"""``tlsctl send --loopback``: the whole path with no preparation at all.

A ``serve``-style server runs in a thread of the same process on
127.0.0.1 with an ephemeral certificate; the client trusts exactly that
certificate (verification stays on), sends through the kTLS layer, and the
server hashes what it received, so one command shows the handshake, the
key handoff and both record-layer directions agreeing byte for byte.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import tempfile
import threading
from collections.abc import Iterator

from tlsctl.commands._certs import ephemeral_server_cert
from tlsctl.commands._channel import BASE_OFFLOADS, DeviceSpec, Offload
from tlsctl.commands._handlers import hash_sink
from tlsctl.commands._tlsconf import TlsOptions, server_context
from tlsctl.commands.serve import Server


@contextlib.contextmanager
def loopback_server(
    opts: TlsOptions, offload: Offload, device: DeviceSpec | None = None
) -> Iterator[tuple[int, str, Server]]:
    """Yield (port, path of the certificate to trust, server) for one connection."""
    ck = ephemeral_server_cert()
    ctx = server_context(dataclasses.replace(opts, cafile=None), cert=ck.cert, key=ck.key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = int(listener.getsockname()[1])
    # The built-in receiver decrypts in software; a NIC offload is the sender's.
    server_offload = offload if offload in BASE_OFFLOADS else "sw"
    server = Server(listener, ctx, hash_sink, mode="sink", offload=server_offload, naccept=1,
                    timeout=60, keylog=None, quiet=True, as_json=False, closes_first=False)
    thread = threading.Thread(target=server.serve_forever, name="loopback-serve", daemon=True)
    thread.start()
    fd, ca_path = tempfile.mkstemp(prefix="tlsctl-loopback-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(ck.cert_pem())
        yield port, ca_path, server
        thread.join(30)
    finally:
        server.stop.set()
        os.unlink(ca_path)


@contextlib.contextmanager
def random_file(size: int) -> Iterator[str]:
    """A temporary file of ``size`` random bytes (the default payload)."""
    fd, path = tempfile.mkstemp(prefix="tlsctl-payload-")
    try:
        with os.fdopen(fd, "wb") as f:
            block = os.urandom(1 << 20)
            left = size
            while left > 0:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
        yield path
    finally:
        os.unlink(path)
