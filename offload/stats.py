"""Named counters: the TLS ones of /proc/net/tls_stat, and the type every counter set shares.

:class:`Counters` is one fixed set of named counters with the API both
kinds use: ``inc``/``inc_pair`` (unknown names raise, so a typo is a bug
found at once rather than a counter that silently stays 0), reads like a
read-only dict, ``snapshot`` for a consistent copy.  Increments take a lock:
the TX worker thread, the RX path and a NIC driver count concurrently.

:class:`TlsStats` holds the /proc/net/tls_stat names.  Linux keeps these per
network namespace; this layer keeps one set per process (``GLOBAL``) and
one per socket, so a tool can show both the machine-wide view (``tlsctl
inspect-context --stats``) and a connection's.  Every increment goes to
both.  The device counters (ethtool names) are ``offload.netdev.DeviceStats``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import ClassVar

TLS_STAT_NAMES: tuple[str, ...] = (
    "TlsCurrTxSw",
    "TlsCurrRxSw",
    "TlsCurrTxDevice",
    "TlsCurrRxDevice",
    "TlsTxSw",
    "TlsRxSw",
    "TlsTxDevice",
    "TlsRxDevice",
    "TlsDecryptError",
    "TlsRxDeviceResync",
    "TlsDecryptRetry",
    "TlsRxNoPadViolation",
    "TlsRxRekeyOk",
    "TlsRxRekeyError",
    "TlsTxRekeyOk",
    "TlsTxRekeyError",
    "TlsRxRekeyReceived",
)


class Counters(Mapping[str, int]):
    """A fixed set of named counters; reads like a dict, unknown names raise.

    Subclasses name the set (``names``) and say what kind of counter an
    unknown name was meant to be (``kind``, for the error).  With a
    ``parent`` every increment is counted there too (a socket's counters
    feed the process-wide ones).
    """

    names: ClassVar[tuple[str, ...]] = ()
    kind: ClassVar[str] = ""

    def __init__(self, parent: Counters | None = None) -> None:
        self._values = dict.fromkeys(self.names, 0)
        self._parent = parent
        self._lock = threading.Lock()

    def inc(self, name: str, delta: int = 1) -> None:
        if name not in self._values:
            raise KeyError(f"unknown {self.kind} counter {name!r}")
        with self._lock:
            self._values[name] += delta
        if self._parent is not None:
            self._parent.inc(name, delta)

    def inc_pair(self, name: str, delta: int, name2: str, delta2: int) -> None:
        """Two counters under one lock acquisition (packets and bytes per xmit)."""
        v = self._values
        if name not in v or name2 not in v:
            raise KeyError(f"unknown {self.kind} counter {name!r} or {name2!r}")
        with self._lock:
            v[name] += delta
            v[name2] += delta2
        if self._parent is not None:
            self._parent.inc_pair(name, delta, name2, delta2)

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class TlsStats(Counters):
    """The /proc/net/tls_stat counters (one set per socket, one per process)."""

    names = TLS_STAT_NAMES
    kind = "TLS"

    def format_proc(self) -> str:
        """The text /proc/net/tls_stat would show: one ``Name value`` per line."""
        return "".join(f"{name:<32}{value}\n" for name, value in self.snapshot().items())


GLOBAL = TlsStats()
"""Counters for every socket in this process (the /proc/net/tls_stat view)."""


def parse_proc_tls_stat(text: str) -> dict[str, int]:
    """Parse the real /proc/net/tls_stat (for hosts that have kTLS)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out
