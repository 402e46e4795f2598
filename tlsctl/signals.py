"""SIGINT and SIGTERM for commands that must stop cleanly, never mid-record.

A ``KeyboardInterrupt`` lands between any two bytecodes: inside the record
layer that can be after ``sendmsg`` wrote part of a queue and before the
queue was trimmed, so the clean-up flush writes those bytes a second time
and the peer reports forged data (bad_record_mac).  :class:`StopSignals`
turns both signals into :class:`Interrupted`, raised

* at once outside :meth:`StopSignals.critical` sections (a handshake, a
  read from stdin, a wait for the peer: nothing half-written can be left),
* at the end of a critical section otherwise (a send of whole records,
  a KeyUpdate, a close_notify), so the layer is always left consistent.

A second signal during a critical section means "stop now": the
``abandon`` callback runs first (``send`` shuts the TCP socket down so no
byte of a half-written record can follow) and then :class:`Interrupted` is
raised where the code is.  :meth:`StopSignals.shielded` sections (ending
child processes, removing files) are never cut: signals there are only
noted.  SIGTERM is handled exactly like SIGINT, so ``finally`` blocks remove
temporary files and control sockets either way; the exit status tells them
apart (130 / 143).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from tlsctl.exitcodes import ExitStatus

_STATUS = {signal.SIGINT: ExitStatus.INTERRUPTED, signal.SIGTERM: ExitStatus.TERMINATED}


class Interrupted(BaseException):
    """The command was asked to stop by SIGINT or SIGTERM.

    A BaseException, like KeyboardInterrupt, so ``except Exception`` code on
    the way out does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def status(self) -> ExitStatus:
        return _STATUS.get(signal.Signals(self.signum), ExitStatus.INTERRUPTED)


class StopSignals:
    """SIGINT/SIGTERM handlers for the duration of a ``with`` block.

    Outside the main thread (signals cannot be handled there) the object
    does nothing but count critical sections, so library callers are safe.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.abandon: Callable[[], None] | None = None
        self._depth = 0
        self._shield = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in _STATUS:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if self._shield:
            return
        if not self._depth:
            raise Interrupted(self.signum or signum)
        if first:
            return  # raised at the end of the critical section
        # A second signal inside a critical section: give up on whole records.
        if self.abandon is not None:
            with contextlib.suppress(Exception):
                self.abandon()
        self._depth = 0
        raise Interrupted(self.signum or signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal came (between two steps)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextlib.contextmanager
    def critical(self, *, check: bool = True) -> Iterator[None]:
        """A step that must not be cut: signals wait for its end, where
        :class:`Interrupted` is raised (``check=False``: not raised, for
        the clean-up that runs after a stop was already requested)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth = max(0, self._depth - 1)
        if check and not self._depth:
            self.check()

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Clean-up that must run to its end (ending child processes,
        removing files): signals are noted, never raised inside."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1
