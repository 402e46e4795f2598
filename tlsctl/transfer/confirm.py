"""Did the peer get every byte?  How ``send`` decides between exit 0 and 3.

TLS acknowledges nothing: the only proof that the peer read the whole
stream is its close_notify sent *after* it read ours (our close_notify
follows our last byte, and records are authenticated in order).  From our
side of the wire that is checked in three steps:

1. Nothing from the peer may end the connection before our last byte and
   our close_notify are out: a close_notify then (in TLS 1.3 a peer may
   half-close, but it has told us nothing about what it read, and
   ``openssl s_server`` closing at stdin EOF does exactly this), a FIN, a
   reset or a fatal alert means the peer stopped early.
2. After our close_notify the peer must answer with its own: a FIN without
   it, a reset, an alert or silence for ``--timeout`` is a failure.
3. Its close_notify may still have crossed ours on the wire, sent before it
   read ours.  The TCP close tells: a socket closed with unread bytes in it
   answers with a reset (RFC 2525 2.17, what Linux does), and so do bytes
   that reach an already closed socket.  A clean end is therefore a FIN
   whose acknowledgement covers every byte we sent (``SIOCOUTQ`` is 0 when
   the FIN is seen) and no reset.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import termios
import threading

from tlsctl.session.channel import ChannelError, ChannelTimeout, KtlsChannel

_SIOCOUTQ = termios.TIOCOUTQ  # Linux: the same ioctl; bytes sent and not yet ACKed
_TCP_CLOSE = 7  # tcpi_state after a reset (include/net/tcp_states.h)
_HANGUP = select.POLLRDHUP | select.POLLHUP | select.POLLERR
_TAIL_MAX = 1 << 16  # bytes kept of what the peer sends after our close_notify

EARLY_CLOSE_NOTIFY = (
    "the peer sent close_notify before our last byte and close_notify "
    "were out (it may not have read them)"
)
NO_CLOSE_NOTIFY = "the peer closed the connection without close_notify"


class Drain(threading.Thread):
    """Reads what the server sends while the file goes out (kTLS layer).

    A server that answers as it reads (``serve --echo``, ``s_server`` echoing
    typed lines) would otherwise fill its send buffer, stop reading, and
    stall the transfer until ``--timeout``.  What it sends is counted and
    discarded (TLS 1.3 tickets and KeyUpdates are handled by the channel);
    its close_notify, EOF or fatal alert ends the thread, and whether that
    came before our close_notify (``closing``, set by the sender just before
    it writes it) is kept for the verdict.  A read timeout while the file is
    still going out is not an error: the server may have nothing to say.
    """

    def __init__(self, chan: KtlsChannel) -> None:
        super().__init__(name="send-drain", daemon=True)
        self.chan = chan
        self.closing = False
        self.early = False
        self.received = 0
        self.received_before_closing = 0  # a sink (bench -connect) never sends any
        self.tail = bytearray()  # the first _TAIL_MAX bytes after ``closing`` (a report)
        self.error: ChannelError | None = None

    def run(self) -> None:
        try:
            self._drain()
        except Exception:
            # The sender gave up (a send failed or timed out) and closed the
            # channel while this thread was still reading: the layer is torn
            # down under the read, and whatever that raises says nothing
            # about the peer (the verdict is already made).  Before the
            # close, a failure here is a bug and is raised.
            if not self.chan.closed:
                raise

    def _drain(self) -> None:
        buf = memoryview(bytearray(1 << 16))
        while True:
            try:
                n = self.chan.recv_into(buf)
            except ChannelTimeout as exc:
                if not self.closing:
                    continue
                self.error = exc
                return
            except ChannelError as exc:
                self.early = not self.closing
                self.error = exc
                return
            if not n:
                self.early = not self.closing
                return
            self.received += n
            if not self.closing:
                self.received_before_closing += n
            elif len(self.tail) < _TAIL_MAX:
                self.tail += buf[: min(n, _TAIL_MAX - len(self.tail))]

    def stopped_early(self) -> str | None:
        """While we still send: what the peer did if it already ended."""
        if self.is_alive():
            return None
        return self.verdict()

    def verdict(self) -> str | None:
        """After the thread ended: None if the peer's close_notify came after ours."""
        if isinstance(self.error, ChannelTimeout):
            return "the peer sent no close_notify within --timeout of ours"
        if self.error is not None:
            return str(self.error)
        if not self.chan.peer_closed:
            return NO_CLOSE_NOTIFY
        if self.early:
            return EARLY_CLOSE_NOTIFY
        return None


def peer_hung_up(sock: socket.socket) -> str | None:
    """Without waiting: has a FIN or a reset already come in?"""
    p = select.poll()
    p.register(sock, _HANGUP)
    if not p.poll(0):
        return None
    return (
        reset_by_peer(sock)
        or "the peer closed the connection before our last byte and close_notify were out"
    )


def await_tcp_close(sock: socket.socket, timeout: float | None) -> str | None:
    """After the peer's close_notify: wait for its FIN and judge the close (step 3)."""
    p = select.poll()
    p.register(sock, _HANGUP)
    if not p.poll(None if timeout is None else int(timeout * 1000)):
        return f"the peer sent close_notify but did not close the connection within {timeout:g} s"
    why = reset_by_peer(sock)
    if why:
        return f"{why} after its close_notify (it had not read everything)"
    left = unacked(sock)
    if left:
        return (
            f"the peer closed the connection before acknowledging our last {left} bytes "
            "(it did not read our close_notify)"
        )
    return None


def reset_by_peer(sock: socket.socket) -> str | None:
    """ "the peer reset the connection" if it did (the error, or the state a
    reset leaves when a failed send already took the error), else None."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        return f"the peer reset the connection ({os.strerror(err)})"
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    if info and info[0] == _TCP_CLOSE:
        return "the peer reset the connection"
    return None


def unacked(sock: socket.socket) -> int:
    """Bytes we wrote that the peer's TCP has not acknowledged (SIOCOUTQ)."""
    raw = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])
