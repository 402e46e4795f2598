"""Every process a bench run starts ends with it, however the bench ends.

The senders (pool workers), the loopback receiver and its per-connection
children, and the tools a sender runs (``openssl s_server``, curl) all get
a signal when the process that started them ends (Linux
``prctl(PR_SET_PDEATHSIG)``), SIGKILL of the bench included; the normal end
(SIGTERM to the pool and the receiver) is the runner's.  CPU time of other
processes is read here too.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import signal
import socket
from collections.abc import Callable
from typing import Any, NoReturn

from tlsctl import pdeath
from tlsctl.pdeath import load_libc


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Get ``sig`` when the process that started this one ends
    (:mod:`tlsctl.pdeath`); if it already has, send ``sig`` now.  Safe
    between fork and exec once :func:`load_libc` ran before the fork."""
    if not pdeath.die_with_parent(parent, sig):
        os.kill(os.getpid(), sig)


def detach_signals(parent: int) -> None:
    """For a sender or the receiver: Ctrl-C is the parent's (it ends us with
    SIGTERM, whose default action nothing here can swallow or wait on), and
    we end with the parent."""
    load_libc()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent)


def worker_init(parent: int, live: Any = None, netns: str | None = None) -> None:
    """Pool initializer of the senders (see :func:`detach_signals`); the tools
    a sender starts die with it (:func:`child_setup`).  ``live``: the queue
    interval reports go to (``-i``); ``netns``: the namespace the sender
    lives in (``--wire netns``: the sender side of the real wire)."""
    from tlsctl.benchrun.intervals import set_live
    from tlsctl.benchrun.wire import enter_namespace

    detach_signals(parent)
    set_live(live)
    enter_namespace(netns)


def child_setup(parent: int) -> Callable[[], None]:
    """``preexec_fn`` for the tools a worker runs: the default SIGINT (not the
    worker's ignored one, which exec would keep) and death with the worker."""
    load_libc()

    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        die_with_parent(parent, signal.SIGKILL)

    return setup


def fork_per_connection(
    listeners: dict[socket.socket, str],
    serve: Callable[[str, socket.socket, Any], None],
) -> NoReturn:
    """Accept on every listener and fork a child per connection, forever.

    The child dies with this process (SIGKILL: a bench that is gone has no
    use for half a transfer), closes the listeners and runs
    ``serve(tag, sock, addr)`` with the listener's tag; it exits 0 when that
    returns, 1 when it raises (what went wrong is ``serve``'s to report).
    Finished children are reaped between accepts.  The loopback receiver
    and ``-R``'s sending server are both this loop.
    """
    me = os.getpid()
    sel = selectors.DefaultSelector()
    for lst, tag in listeners.items():
        sel.register(lst, selectors.EVENT_READ, tag)
    while True:
        for key, _ in sel.select(0.5):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            try:
                sock, addr = ready.accept()
            except OSError:
                continue
            if os.fork() == 0:
                code = 0
                try:
                    die_with_parent(me, signal.SIGKILL)
                    for other in listeners:
                        other.close()
                    serve(key.data, sock, addr)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            sock.close()
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def proc_cpu(pid: int) -> float:
    """user + system CPU seconds of ``pid`` from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """user + system CPU seconds of this process's reaped children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime
