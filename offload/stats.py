"""TLS counters named as in Linux's /proc/net/tls_stat.

Linux keeps these per network namespace; this layer keeps one set per
process (``GLOBAL``) and one per socket, so a tool can show both the
machine-wide view (``tlsctl inspect-context --stats``) and a connection's.
Every increment goes to both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

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


class TlsStats(Mapping[str, int]):
    """A fixed set of named counters; reads like a dict, unknown names raise."""

    def __init__(self, parent: TlsStats | None = None) -> None:
        self._values = dict.fromkeys(TLS_STAT_NAMES, 0)
        self._parent = parent
        self._lock = threading.Lock()

    def inc(self, name: str, delta: int = 1) -> None:
        if name not in self._values:
            raise KeyError(f"unknown TLS counter {name!r}")
        with self._lock:
            self._values[name] += delta
        if self._parent is not None:
            self._parent.inc(name, delta)

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

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
