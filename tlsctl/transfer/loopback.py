"""``tlsctl send --loopback``: the whole path with no preparation at all.

A ``serve``-style server runs in a thread of the same process on
127.0.0.1 with an ephemeral certificate; the client trusts exactly that
certificate (verification stays on), sends through the kTLS layer, and the
server hashes what it received, so one command shows the handshake, the
key handoff and both record-layer directions agreeing byte for byte.

Nothing is left on disk whatever ends the run (SIGTERM included): the
certificate to trust is handed over in memory and the random payload lives
in a file that is unlinked as soon as it is open.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import BinaryIO

from cryptography import x509

from tlsctl.certs import ephemeral_server_cert
from tlsctl.commands.serve import Server
from tlsctl.control import Registrar
from tlsctl.offloadmode import DeviceSpec, Offload, receiver_offload
from tlsctl.server.handlers import hash_sink
from tlsctl.tlsconf import TlsOptions, server_context


@contextlib.contextmanager
def loopback_server(
    opts: TlsOptions, offload: Offload, device: DeviceSpec | None = None,
    registrar: Registrar | None = None,
) -> Iterator[tuple[int, x509.Certificate, Server]]:
    """Yield (port, the certificate to trust, server) for one connection
    (registered with ``registrar``, the sender's control server)."""
    ck = ephemeral_server_cert()
    ctx = server_context(dataclasses.replace(opts, cafile=None), cert=ck.cert, key=ck.key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = int(listener.getsockname()[1])
    # The built-in receiver decrypts in software; a NIC offload is the sender's.
    server_offload = receiver_offload(offload)
    server = Server(listener, ctx, hash_sink, mode="sink", offload=server_offload, naccept=1,
                    timeout=60, keylog=None, quiet=True, as_json=False, closes_first=False,
                    registrar=registrar)
    thread = threading.Thread(target=server.serve_forever, name="loopback-serve", daemon=True)
    thread.start()
    try:
        yield port, ck.cert, server
        thread.join(30)
    finally:
        server.stop.set()


@contextlib.contextmanager
def random_file(size: int) -> Iterator[BinaryIO]:
    """An open file of ``size`` random bytes (the default payload), with no
    name: ``TemporaryFile`` unlinks it at once (O_TMPFILE where the file
    system has it), so no signal or crash can leave it behind."""
    with tempfile.TemporaryFile(prefix="tlsctl-payload-") as f:
        block = os.urandom(1 << 20)
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
        f.flush()
        yield f
