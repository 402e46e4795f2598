"""Identical log lines, rate-limited: ``... (repeated N times)``.

A server that runs out of descriptors, or a peer that keeps failing the
same way, would otherwise write the same line many times a second and
bury everything else.  The first occurrence of a message is written at
once; copies within the next ``window`` seconds are only counted, and
when the window closes one line says how many there were.  Each
connection's own log line is not limited (one line per connection is the
contract of ``serve``'s log); this is for the server's own messages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RepeatLimiter:
    """Write each distinct message at most once per ``window`` seconds.

    ``flush()`` must be called now and then (the accept loop does, several
    times a second) to report the counts of windows that have closed, and
    ``close()`` at the end reports the rest.
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, tuple[float, int]] = {}  # message -> (window start, copies)

    def __call__(self, msg: str) -> None:
        with self._lock:
            entry = self._open.get(msg)
            if entry is not None:
                self._open[msg] = (entry[0], entry[1] + 1)
                return
            self._open[msg] = (self._clock(), 0)
        self._emit(msg)

    def flush(self) -> None:
        """Report the copies of every message whose window has closed."""
        now = self._clock()
        lines: list[str] = []
        with self._lock:
            for msg, (start, copies) in list(self._open.items()):
                if now - start < self._window:
                    continue
                if copies:
                    lines.append(_repeated(msg, copies))
                    self._open[msg] = (now, 0)  # still flooding: keep counting
                else:
                    del self._open[msg]  # quiet for a whole window: next one is shown
        for line in lines:
            self._emit(line)

    def close(self) -> None:
        """Report every pending count (at shutdown)."""
        with self._lock:
            lines = [_repeated(m, c) for m, (_s, c) in self._open.items() if c]
            self._open.clear()
        for line in lines:
            self._emit(line)


def _repeated(msg: str, copies: int) -> str:
    return f"{msg} (repeated {copies} time{'s' if copies != 1 else ''})"
