"""Interval reports (``bench -i SECONDS``), as iperf3 counts them.

The side of the bench that moves the data through its own loop (the sender,
or with ``-R`` the receiving client) tells an :class:`IntervalClock` each
time a write (or read) completes.  Bytes count in the interval in which the
call *returned* (iperf3 does the same: a write blocked across a boundary
counts after it), and an interval whose boundary passed while a call was
blocked is reported with 0 bytes, as iperf3 reports a stalled second.

With a time bound (``-t``) no boundary at or past the bound is closed: the
last interval runs from the last boundary to the end of the transfer and
holds the tail, so ``-t 2 -i 0.5`` always gives four intervals and the
intervals' bytes always sum to the transfer's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_EPS = 1e-9


@dataclass(frozen=True)
class Interval:
    """One report line: seconds since the transfer started, bytes in it."""

    round: int
    stream: int
    start: float
    end: float
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` object (``intervals`` array of a row)."""
        span = self.end - self.start
        return {
            "round": self.round,
            "stream": self.stream,
            "start": round(self.start, 6),
            "end": round(self.end, 6),
            "bytes": self.bytes,
            "bits_per_second": round(self.bytes * 8 / span, 1) if span > 0 else 0.0,
        }


class IntervalClock:
    """Counts bytes into intervals of ``every`` seconds (None: no intervals,
    :meth:`add` costs one comparison)."""

    def __init__(
        self,
        every: float | None,
        limit: float | None,
        *,
        round_no: int = 1,
        stream: int = 1,
        sink: Callable[[Interval], None] | None = None,
    ) -> None:
        self.every = every
        self.limit = limit
        self.round_no = round_no
        self.stream = stream
        self.sink = sink
        self.done: list[Interval] = []
        self._t0 = 0.0
        self._start = 0.0
        self._k = 1
        self._next = float("inf")
        self._acc = 0

    def start(self, t0: float | None = None) -> float:
        """The transfer starts now (or at ``t0``, a ``time.monotonic()`` stamp)."""
        self._t0 = time.monotonic() if t0 is None else t0
        if self.every is not None:
            self._next = self._t0 + self.every
        return self._t0

    def add(self, n: int) -> None:
        """``n`` more bytes just moved (the call that moved them returned now)."""
        if self.every is not None:
            now = time.monotonic()
            if now >= self._next:
                self._close_until(now)
        self._acc += n

    def _close_until(self, now: float) -> None:
        assert self.every is not None
        while now >= self._next:
            rel = self._k * self.every
            if self.limit is not None and rel >= self.limit - _EPS:
                self._next = float("inf")  # the last interval runs to the end
                return
            self._emit(rel)
            self._k += 1
            self._next = self._t0 + self._k * self.every

    def _emit(self, rel_end: float) -> None:
        iv = Interval(self.round_no, self.stream, self._start, rel_end, self._acc)
        self.done.append(iv)
        self._start = rel_end
        self._acc = 0
        if self.sink is not None:
            self.sink(iv)

    def finish(self, end: float | None = None) -> list[dict[str, Any]] | None:
        """The transfer ended (now, or at ``end``): the last interval closed;
        the ``--json`` objects (None without ``-i``)."""
        if self.every is None:
            return None
        now = time.monotonic() if end is None else end
        if self.limit is None:
            self._close_until(now)
        if self._acc or not self.done:
            self._emit(max(now - self._t0, self._start))
        return [iv.as_dict() for iv in self.done]


_live: Any = None


def set_live(queue: Any) -> None:
    """In a sender process (pool initializer): where finished intervals go
    at once (a multiprocessing queue the runner reads while it waits), so
    ``bench -i`` prints each line when it happens, as iperf3 does."""
    global _live
    _live = queue


def clock_for(
    job_interval: float | None, seconds: float | None, round_no: int, stream: int
) -> IntervalClock:
    """An :class:`IntervalClock` for one stream, reporting live if set up."""
    q = _live
    return IntervalClock(
        job_interval,
        seconds,
        round_no=round_no,
        stream=stream,
        sink=None if q is None or job_interval is None else q.put,
    )
