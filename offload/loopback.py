"""Loopback TCP pairs for asking the host kernel about kTLS.

Light on purpose (no record layer, no AEADs): ``kernel_has_ktls`` and
``tlsctl doctor``'s probes import only this and :mod:`offload.uapi`.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from offload.uapi import SOL_TCP, TCP_ULP


@contextlib.contextmanager
def loopback_pair(timeout: float = 5.0) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair on 127.0.0.1: ``(client, server)``, closed on exit.

    kTLS can only be attached to an ESTABLISHED TCP socket (else ENOTCONN),
    so every probe of the kernel needs a real connection; loopback is the one
    that needs no peer and sends nothing off the host.
    """
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        with socket.create_connection(lsock.getsockname(), timeout=timeout) as c:
            conn, _ = lsock.accept()
            with conn:
                conn.settimeout(timeout)
                yield c, conn
    finally:
        lsock.close()


def attach_tls_ulp(sock: socket.socket) -> None:
    """``setsockopt(SOL_TCP, TCP_ULP, "tls")``: raises the kernel's OSError
    (ENOENT when no ``tls`` ULP is registered and none could be autoloaded)."""
    sock.setsockopt(SOL_TCP, TCP_ULP, b"tls")
