"""The host kernel's kTLS: detection.

With the kernel backend a :class:`~offload.ktls_socket.KTLSSocket` forwards
``setsockopt``/``getsockopt``/``sendmsg``/``recvmsg`` to the real socket and
``sendfile`` to ``os.sendfile`` (zero copy through the kernel).  This module
answers the one question that needs a probe: does this kernel have kTLS?
(``tlsctl doctor`` asks the longer questions with the same loopback pair.)
"""

from __future__ import annotations

import contextlib
import errno
import functools
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


@functools.lru_cache(maxsize=1)
def kernel_has_ktls() -> tuple[bool, str]:
    """(True, "") when the ``tls`` ULP attaches here, else (False, reason).

    Probes with a loopback TCP pair, the only reliable test: the module may
    be built in, loadable on demand, or absent, and /proc/net/tls_stat only
    exists once it is loaded.
    """
    try:
        with loopback_pair() as (c, _):
            try:
                attach_tls_ulp(c)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return False, "the kernel has no tls module (kTLS unavailable)"
                return False, f"the tls ULP does not attach: {exc.strerror}"
        return True, ""
    except OSError as exc:
        return False, f"cannot probe kTLS: {exc.strerror}"
