"""``serve --workers N``: N processes accepting on one port.

Python threads share one interpreter lock, so one process cannot keep two
cores busy with AES; N forked workers can.  Each worker has its own
listening socket in the same SO_REUSEPORT group, so the kernel spreads new
connections over them.  The parent only forwards SIGINT/SIGTERM and waits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable

from tlsctl.control import ControlServer


def run_workers(
    n: int,
    first: socket.socket,
    make_listener: Callable[[], socket.socket],
    run: Callable[[socket.socket], None],
) -> None:
    """Fork ``n`` workers: worker 0 takes ``first``, the others bind anew.

    The parent closes its copy of ``first`` after forking: a listener in the
    group that nobody accepts on would strand the connections hashed to it.
    """
    pids: list[int] = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                if i == 0:
                    lst = first
                else:
                    first.close()
                    lst = make_listener()
                run(lst)
            except BaseException as exc:
                print(f"worker {i}: {exc}", file=sys.stderr)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                control = ControlServer.current()
                if control is not None:  # os._exit skips atexit: remove our socket
                    control.stop()
                os._exit(code)
        pids.append(pid)
    first.close()

    def forward(sig: int, _frame: object) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    failed = 0
    for p in pids:
        _, status = os.waitpid(p, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    if failed:
        raise SystemExit(1)
