"""``serve --workers N``: N processes accepting on one listening socket.

Python threads share one interpreter lock, so one process cannot keep two
cores busy with AES; N forked workers can.

One socket, inherited.  The workers accept on the listening socket the
parent made, rather than each binding its own in an SO_REUSEPORT group:
any other process of the same user could join such a group at any time
and silently take a share of the connections, and no socket option keeps
it out.  Whichever worker is free first takes the next connection (a busy
one is late to its ``accept``), which spreads CPU-bound work about as well
as the kernel's hash would.

Signals.  The parent never dies of SIGINT, SIGTERM, SIGHUP or SIGUSR1: it
forwards them to every worker (SIGUSR1 is ``serve``'s rekey signal) and
waits.  Around each ``fork`` those signals are blocked, so a child never
runs the parent's forwarding handler: it installs its own, then unblocks.
A signal that reached the parent while a worker was being forked is
replayed to that worker.  The workers never outlive the parent: each asks
the kernel for SIGTERM when the parent dies (``PR_SET_PDEATHSIG``), which
stops it as ``serve``'s SIGTERM does.  Linux-only, like the rest of the
project.

Exit status: the worst of the workers' (FAILED, then INCOMPLETE, then OK);
a worker killed by a signal counts as FAILED.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from tlsctl.exitcodes import ExitStatus
from tlsctl.pdeath import die_with_parent

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_REAP_POLL = 0.1  # seconds; see run_workers


def run_workers(
    n: int,
    listener: socket.socket,
    prepare: Callable[[int], Callable[[], ExitStatus]],
    *,
    warn: Callable[[str], None],
    on_exit: Callable[[], None] | None = None,
) -> ExitStatus:
    """Fork ``n`` workers that share ``listener``; wait for all of them.

    ``prepare(i)`` runs in worker ``i`` with the forwarded signals still
    blocked: it builds the worker's server and installs its signal
    handlers; the function it returns then serves (signals unblocked) and
    gives the worker's exit status.  ``on_exit`` runs in each worker on its
    way out, however it ends (``os._exit`` skips atexit: ``serve`` removes
    the worker's control socket there).  ``warn`` says which worker died
    and how, in the parent, and a worker's last words, in the worker.
    """
    parent = os.getpid()
    pids: dict[int, int] = {}  # pid -> worker index
    stopping: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        if sig in _STOPS:
            stopping.append(sig)
        for pid in list(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    for i in range(n):
        if stopping:
            break
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            _worker(i, parent, mask, prepare, on_exit, warn)
        pids[pid] = i
        if stopping:  # reached us (another thread) between the fork and here
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, stopping[-1])
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    listener.close()  # the parent does not accept; the workers hold the socket
    return _reap(pids, warn)


def _reap(pids: dict[int, int], warn: Callable[[str], None]) -> ExitStatus:
    """Wait for every worker; the worst status wins.

    ``waitpid`` is polled, not blocking: a signal may be delivered to
    another thread of this process (the control socket's), which would not
    interrupt a blocking ``waitpid`` in the main thread, and its handler
    would run only when a worker exits.
    """
    worst = ExitStatus.OK
    while pids:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(_REAP_POLL)
            continue
        i = pids.pop(pid, None)
        if i is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code == ExitStatus.INCOMPLETE:
            worst = max(worst, ExitStatus.INCOMPLETE, key=_severity)
        elif code != ExitStatus.OK:
            how = (
                f"was killed by {signal.Signals(-code).name}"
                if code < 0
                else f"exited with status {code}"
            )
            warn(f"worker {i} (pid {pid}) {how}")
            worst = ExitStatus.FAILED
    return worst


def _severity(status: ExitStatus) -> int:
    return {ExitStatus.OK: 0, ExitStatus.INCOMPLETE: 1}.get(status, 2)


def _worker(
    i: int,
    parent: int,
    mask: set[int | signal.Signals],
    prepare: Callable[[int], Callable[[], ExitStatus]],
    on_exit: Callable[[], None] | None,
    warn: Callable[[str], None],
) -> NoReturn:
    """The child's whole life: never returns into the parent's code."""
    code = int(ExitStatus.FAILED)
    try:
        if not die_with_parent(parent, signal.SIGTERM):  # the parent died before prctl
            os._exit(code)
        serve = prepare(i)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        code = int(serve())
    except BaseException as exc:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        with contextlib.suppress(Exception):
            warn(f"worker {i}: {message}")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if on_exit is not None:  # os._exit skips atexit (e.g. remove our control socket)
            with contextlib.suppress(Exception):
                on_exit()
        os._exit(code)
