"""When a call on the wrapped TCP socket may wait, and whether it would.

Python sockets with a timeout wait inside ``recv``/``send`` even with
MSG_DONTWAIT (then raise TimeoutError), so the layer asks first instead of
trusting the flag: these two questions are shared by the TX queue and the
receive loop.
"""

from __future__ import annotations

import select
import socket


def ready(sock: socket.socket, event: int) -> bool:
    """Would an operation on ``sock`` proceed now (``select.POLLIN`` /
    ``select.POLLOUT``)?"""
    p = select.poll()
    p.register(sock, event)
    return bool(p.poll(0))


def may_block(sock: socket.socket, flags: int) -> bool:
    """Whether a call with ``flags`` may wait, as for a Python socket: with a
    timeout set, Python waits up to it even for MSG_DONTWAIT."""
    if not sock.getblocking():
        return False
    return not (flags & socket.MSG_DONTWAIT and sock.gettimeout() is None)


__all__ = ["may_block", "ready"]
