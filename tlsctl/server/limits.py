"""How many connections at once, and how long a handshake may take: the
server's defaults, in a module light enough for ``serve --help`` to read.
"""

from __future__ import annotations

import os
import resource

__all__ = ["HANDSHAKE_TIMEOUT", "default_max_conns"]

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client has to complete its handshake (``--handshake-timeout``),
apart from the idle timeout after it, so connections that never speak TLS
free their slot quickly."""

_FD_HEADROOM = 64  # descriptors kept free for the listener, logs, control socket, ...
_FDS_PER_CONN = 2  # the connection's socket and, with --save-dir/-o, its file
_MAX_CONNS_CEILING = 4096  # a thread and up to 1 MiB of receive buffer each


def default_max_conns() -> int:
    """Connections one process can hold without running out of descriptors.

    Half of what RLIMIT_NOFILE leaves free after the descriptors already
    open and some headroom (each connection needs its socket and, when
    storing, its file), at most ``_MAX_CONNS_CEILING``.  Beyond the cap new
    clients wait in the listen backlog instead of being accepted and failed.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    try:
        in_use = len(os.listdir("/proc/self/fd")) - 1  # minus listdir's own
    except OSError:
        in_use = 16
    free = soft - in_use - _FD_HEADROOM
    return max(1, min(_MAX_CONNS_CEILING, free // _FDS_PER_CONN))
