"""A child process ends with the process that started it (Linux only).

``prctl(PR_SET_PDEATHSIG, sig)``: the kernel sends ``sig`` to this process
when the thread that forked it exits, however it exits, SIGKILL included.
``serve --workers`` children, the bench's senders, receiver and the tools
they run all use it, so nothing outlives a command that was killed.
"""

from __future__ import annotations

import os
from typing import Any

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC: Any = None


def load_libc() -> None:
    """Load libc now, so :func:`die_with_parent` is safe between fork and
    exec (``preexec_fn``: no imports or ``dlopen`` there)."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent: int, sig: int) -> bool:
    """Get ``sig`` when the process that started this one ends.

    Returns False when ``parent`` had already gone before the request took
    effect (this process was re-parented): the caller decides how to end.
    Raises OSError when the kernel refuses the request.
    """
    load_libc()
    if _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    return os.getppid() == parent
