"""The host kernel's kTLS: detection.

With the kernel backend a :class:`~offload.ktls_socket.KTLSSocket` forwards
``setsockopt``/``getsockopt``/``sendmsg``/``recvmsg`` to the real socket and
``sendfile`` to ``os.sendfile`` (zero copy through the kernel).  This module
answers the one question that needs a probe: does this kernel have kTLS?
"""

from __future__ import annotations

import errno
import functools
import socket

from offload.uapi import SOL_TCP, TCP_ULP


@functools.lru_cache(maxsize=1)
def kernel_has_ktls() -> tuple[bool, str]:
    """(True, "") when the ``tls`` ULP attaches here, else (False, reason).

    Probes with a loopback TCP pair, the only reliable test: the module may
    be built in, loadable on demand, or absent, and /proc/net/tls_stat only
    exists once it is loaded.
    """
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        with socket.create_connection(lsock.getsockname(), timeout=5) as c:
            conn, _ = lsock.accept()
            with conn:
                try:
                    c.setsockopt(SOL_TCP, TCP_ULP, b"tls")
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        return False, "the kernel has no tls module (kTLS unavailable)"
                    return False, f"the tls ULP does not attach: {exc.strerror}"
        return True, ""
    except OSError as exc:
        return False, f"cannot probe kTLS: {exc.strerror}"
    finally:
        lsock.close()
