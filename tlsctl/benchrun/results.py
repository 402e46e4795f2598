"""What a bench run measured: per stream, per mode, and the stable JSON rows.

Host CPU is the sender's user+sys CPU minus the CPU time spent inside the
simulated NIC driver's ``xmit`` (what hardware would do), which is reported
as device CPU; the receiver's CPU is reported apart.  Over the real wire
(``--wire netns``) the NIC is a process of its own: host CPU is the
sender's whole CPU and device CPU the NIC process's, beside it, not added.
With ``-R`` the sender is the bench's server and the receiver its client.

Units, named in every key: ``bytes_per_second`` and ``bits_per_second``
are plain numbers (bytes and bits per second); ``*_s_per_gb`` are CPU
seconds per GB with 1 GB = 10^9 bytes (decimal, as throughput is quoted).

The rows (``tlsctl bench --json``; stable) are a list with one object per
mode, in the order run::

  {"mode": str,                          # one of the modes
   "direction": str,                     # "tx": host = the sender; "rx": host = the receiver
   "bytes_per_second": float | null,     # median over repeats
   "bytes_per_second_min": float | null,
   "bytes_per_second_max": float | null,
   "bits_per_second": float | null,      # the same three, times 8
   "bits_per_second_min": float | null,
   "bits_per_second_max": float | null,
   "host_cpu_s_per_gb": float | null,    # tx: sender CPU (minus device CPU in-process);
                                         # rx: receiver CPU minus the NIC's rx; median
   "device_cpu_s_per_gb": float | null,  # the NIC: its driver, or its process (netns)
   "receiver_cpu_s_per_gb": float | null,  # tx: receiver process (null: remote);
                                         # rx: the receiving process's whole CPU
                                         # (host + the in-process NIC's rx)
   "cpu_vs_tcp": float | null,           # host_cpu_s_per_gb / tcp's (null without tcp)
   "bytes": int,                         # plaintext bytes moved, all repeats and streams
   "repeats": int,                       # repeats completed
   "confirmed": str | null,              # "count" (receiver's byte count) or "close_notify"
   "skipped": str | null,                # why the mode did not run, else null
   "intervals": list | null,             # -i: {round, stream, start, end, bytes,
                                         #      bits_per_second} (start/end: s since
                                         #      the stream began); null without -i
   "device_counters": dict | null}       # the NIC's counters (ethtool names) summed
                                         # over the mode's transfers; null without a NIC
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from tlsctl.benchrun.errors import BenchError

TIMES = "\N{MULTIPLICATION SIGN}"

SCHEMA: dict[str, tuple[type, ...]] = {
    "mode": (str,),
    "direction": (str,),
    "bytes_per_second": (float, type(None)),
    "bytes_per_second_min": (float, type(None)),
    "bytes_per_second_max": (float, type(None)),
    "bits_per_second": (float, type(None)),
    "bits_per_second_min": (float, type(None)),
    "bits_per_second_max": (float, type(None)),
    "host_cpu_s_per_gb": (float, type(None)),
    "device_cpu_s_per_gb": (float, type(None)),
    "receiver_cpu_s_per_gb": (float, type(None)),
    "cpu_vs_tcp": (float, type(None)),
    "bytes": (int,),
    "repeats": (int,),
    "confirmed": (str, type(None)),
    "skipped": (str, type(None)),
    "intervals": (list, type(None)),
    "device_counters": (dict, type(None)),
}
"""Field name -> allowed Python types of one row (the ``--json`` object)."""
CSV_FIELDS = tuple(k for k, types in SCHEMA.items() if list not in types and dict not in types)
"""The columns of ``--csv``: the scalar fields (intervals and counters are JSON-only)."""


@dataclass
class Result:
    """What one stream measured (monotonic clock stamps comparable across processes)."""

    mode: str
    bytes: int
    start: float
    end: float
    cpu: float  # sender process CPU, user + sys
    device_cpu: float = 0.0  # inside the NIC driver (what hardware would do)
    receiver_cpu: float | None = None
    confirmed: str = ""  # how the receiver confirmed: "count" or "close_notify"
    extra: dict[str, Any] = field(default_factory=dict)
    intervals: list[dict[str, Any]] | None = None  # -i: IntervalClock.finish()
    device_counters: dict[str, int] | None = None  # the NIC's counters for this stream


@dataclass
class ModeRuns:
    """Per-repeat aggregates of one mode (all streams of a repeat combined)."""

    mode: str
    skipped: str | None = None
    direction: str = "tx"
    bytes: int = 0
    rates: list[float] = field(default_factory=list)  # bytes per second, per repeat
    host: list[float] = field(default_factory=list)
    device: list[float] = field(default_factory=list)
    receiver: list[float] = field(default_factory=list)
    confirmed: str | None = None
    intervals: list[dict[str, Any]] | None = None
    device_counters: dict[str, int] | None = None

    def add(
        self,
        results: list[Result],
        *,
        nic_cpu: float | None = None,
        counters: dict[str, int] | None = None,
    ) -> None:
        """One repeat's streams.  ``nic_cpu``: the NIC process's CPU seconds
        over the repeat (real wire): the device CPU, and the senders' CPU is
        all host CPU.  ``counters``: the NIC's counters over the repeat
        (else each stream's own, summed)."""
        total = sum(r.bytes for r in results)
        wall = max(r.end for r in results) - min(r.start for r in results)
        gb = total / 1e9
        if gb <= 0 or wall <= 0:
            raise BenchError(f"{self.mode}: moved no data")
        self.bytes += total
        self.rates.append(total / wall)
        if nic_cpu is None:
            dev = sum(r.device_cpu for r in results)
            self.host.append((sum(r.cpu for r in results) - dev) / gb)
        else:
            dev = nic_cpu
            self.host.append(sum(r.cpu for r in results) / gb)
        self.device.append(dev / gb)
        for r in results:
            if r.intervals is not None:
                self.intervals = (self.intervals or []) + r.intervals
        for c in [counters] if counters is not None else [r.device_counters for r in results]:
            if c is not None:
                mine = self.device_counters = self.device_counters or {}
                for k, v in c.items():
                    mine[k] = mine.get(k, 0) + v
        rcpu = [r.receiver_cpu for r in results]
        if all(c is not None for c in rcpu):
            self.receiver.append(sum(c for c in rcpu if c is not None) / gb)
        self.confirmed = results[0].confirmed


def _med(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 4) if xs else None


def _rate(x: float | None, scale: int = 1) -> float | None:
    return None if x is None else round(x * scale, 1)


def summarize(runs: list[ModeRuns]) -> list[dict[str, Any]]:
    """The rows (see the module docstring)."""
    tcp = next((r for r in runs if r.mode == "tcp" and r.host), None)
    tcp_cpu = statistics.median(tcp.host) if tcp else None
    out: list[dict[str, Any]] = []
    for r in runs:
        host = _med(r.host)
        med = statistics.median(r.rates) if r.rates else None
        lo = min(r.rates) if r.rates else None
        hi = max(r.rates) if r.rates else None
        out.append(
            {
                "mode": r.mode,
                "direction": r.direction,
                "bytes_per_second": _rate(med),
                "bytes_per_second_min": _rate(lo),
                "bytes_per_second_max": _rate(hi),
                "bits_per_second": _rate(med, 8),
                "bits_per_second_min": _rate(lo, 8),
                "bits_per_second_max": _rate(hi, 8),
                "host_cpu_s_per_gb": host,
                "device_cpu_s_per_gb": _med(r.device),
                "receiver_cpu_s_per_gb": _med(r.receiver),
                "cpu_vs_tcp": (
                    round(statistics.median(r.host) / tcp_cpu, 3) if tcp_cpu and r.host else None
                ),
                "bytes": r.bytes,
                "repeats": len(r.rates),
                "confirmed": r.confirmed,
                "skipped": r.skipped,
                "intervals": r.intervals,
                "device_counters": r.device_counters,
            }
        )
    return out


def headline(rows: list[dict[str, Any]]) -> str:
    """The comparison in plain words, from whatever modes ran, each called by
    its name in the table (``sw``, ``sim-nic``...), so the two read alike."""
    by = {r["mode"]: r for r in rows if r["bytes_per_second"] is not None}
    tcp = by.get("tcp")
    if tcp is None:
        sw, nic = by.get("sw"), by.get("sim-nic")
        if sw is None or nic is None or not sw["host_cpu_s_per_gb"]:
            return "no tcp baseline measured: CPU is not compared"
        return (
            f"no tcp baseline; sim-nic costs "
            f"{nic['host_cpu_s_per_gb'] / sw['host_cpu_s_per_gb']:.2f}{TIMES} the host CPU "
            f"of sw at {nic['bytes_per_second'] / sw['bytes_per_second']:.2f}{TIMES} "
            "its throughput"
        )
    parts = []
    for mode in ("userspace", "sw", "sim-nic", "kernel", "openssl"):
        r = by.get(mode)
        if r is None or r["cpu_vs_tcp"] is None:
            continue
        tp = r["bytes_per_second"] / tcp["bytes_per_second"]
        text = (
            f"{mode} costs {r['cpu_vs_tcp']:.1f}{TIMES} the CPU of tcp "
            f"at {tp:.2f}{TIMES} the throughput"
        )
        if mode == "sim-nic" and r["device_cpu_s_per_gb"]:
            text += f" (+{r['device_cpu_s_per_gb']:.2f} s/GB on the NIC)"
        parts.append(text)
    text = "; ".join(parts) if parts else "only tcp measured"
    if any(r.get("direction") == "rx" for r in rows):
        text = "receiving host: " + text
    return text
