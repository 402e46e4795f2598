"""Every process a bench run starts ends with it, however the bench ends.

The senders (pool workers), the loopback receiver and its per-connection
children, and the tools a sender runs (``openssl s_server``, curl) all get
a signal when the process that started them ends (Linux
``prctl(PR_SET_PDEATHSIG)``), SIGKILL of the bench included; the normal end
(SIGTERM to the pool and the receiver) is the runner's.  CPU time of other
processes is read here too.
"""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC: Any = None


def load_libc() -> None:
    """Load libc now, so :func:`die_with_parent` is safe between fork and exec."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Get ``sig`` when the process that started this one ends (Linux
    ``prctl(PR_SET_PDEATHSIG)``), however it ends, SIGKILL included; if it
    already has, send ``sig`` now.  Safe between fork and exec (``preexec_fn``)
    once :func:`load_libc` ran before the fork.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:
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


def proc_cpu(pid: int) -> float:
    """user + system CPU seconds of ``pid`` from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """user + system CPU seconds of this process's reaped children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime
