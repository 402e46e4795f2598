"""What a bench run measured: per stream, per mode, and the stable JSON rows.

Host CPU is the sender's user+sys CPU minus the CPU time spent inside the
simulated NIC driver's ``xmit`` (what hardware would do), which is reported
as device CPU; the receiver's CPU is reported apart.

The rows (``tlsctl bench --json``; stable) are a list with one object per
mode, in the order run::

  {"mode": str,                      # one of the modes
   "throughput_gbps": float | null,  # median over repeats, GB/s (1 GB = 1e9 B)
   "throughput_gbps_min": float | null,
   "throughput_gbps_max": float | null,
   "host_cpu_s_per_gb": float | null,    # sender CPU minus device CPU, median
   "device_cpu_s_per_gb": float | null,  # inside the NIC driver (0 without a NIC)
   "receiver_cpu_s_per_gb": float | null,  # receiver process (null: remote)
   "cpu_vs_tcp": float | null,       # host_cpu_s_per_gb / tcp's (null without tcp)
   "bytes": int,                     # plaintext bytes moved, all repeats and streams
   "repeats": int,                   # repeats completed
   "confirmed": str | null,          # "count" (receiver's byte count) or "close_notify"
   "skipped": str | null}            # why the mode did not run, else null
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from tlsctl.benchrun.errors import BenchError

TIMES = "\N{MULTIPLICATION SIGN}"

SCHEMA: dict[str, tuple[type, ...]] = {
    "mode": (str,),
    "throughput_gbps": (float, type(None)),
    "throughput_gbps_min": (float, type(None)),
    "throughput_gbps_max": (float, type(None)),
    "host_cpu_s_per_gb": (float, type(None)),
    "device_cpu_s_per_gb": (float, type(None)),
    "receiver_cpu_s_per_gb": (float, type(None)),
    "cpu_vs_tcp": (float, type(None)),
    "bytes": (int,),
    "repeats": (int,),
    "confirmed": (str, type(None)),
    "skipped": (str, type(None)),
}
"""Field name -> allowed Python types of one row (the ``--json`` object)."""


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


@dataclass
class ModeRuns:
    """Per-repeat aggregates of one mode (all streams of a repeat combined)."""

    mode: str
    skipped: str | None = None
    bytes: int = 0
    gbps: list[float] = field(default_factory=list)
    host: list[float] = field(default_factory=list)
    device: list[float] = field(default_factory=list)
    receiver: list[float] = field(default_factory=list)
    confirmed: str | None = None

    def add(self, results: list[Result]) -> None:
        total = sum(r.bytes for r in results)
        wall = max(r.end for r in results) - min(r.start for r in results)
        gb = total / 1e9
        if gb <= 0 or wall <= 0:
            raise BenchError(f"{self.mode}: moved no data")
        self.bytes += total
        self.gbps.append(gb / wall)
        dev = sum(r.device_cpu for r in results)
        self.host.append((sum(r.cpu for r in results) - dev) / gb)
        self.device.append(dev / gb)
        rcpu = [r.receiver_cpu for r in results]
        if all(c is not None for c in rcpu):
            self.receiver.append(sum(c for c in rcpu if c is not None) / gb)
        self.confirmed = results[0].confirmed


def _med(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 4) if xs else None


def summarize(runs: list[ModeRuns]) -> list[dict[str, Any]]:
    """The rows (see the module docstring)."""
    tcp = next((r for r in runs if r.mode == "tcp" and r.host), None)
    tcp_cpu = statistics.median(tcp.host) if tcp else None
    out: list[dict[str, Any]] = []
    for r in runs:
        host = _med(r.host)
        out.append(
            {
                "mode": r.mode,
                "throughput_gbps": _med(r.gbps),
                "throughput_gbps_min": round(min(r.gbps), 4) if r.gbps else None,
                "throughput_gbps_max": round(max(r.gbps), 4) if r.gbps else None,
                "host_cpu_s_per_gb": host,
                "device_cpu_s_per_gb": _med(r.device),
                "receiver_cpu_s_per_gb": _med(r.receiver),
                "cpu_vs_tcp": (
                    round(statistics.median(r.host) / tcp_cpu, 3) if tcp_cpu and r.host else None
                ),
                "bytes": r.bytes,
                "repeats": len(r.gbps),
                "confirmed": r.confirmed,
                "skipped": r.skipped,
            }
        )
    return out


def headline(rows: list[dict[str, Any]]) -> str:
    """The comparison in plain words, from whatever modes ran, each called by
    its name in the table (``sw``, ``sim-nic``...), so the two read alike."""
    by = {r["mode"]: r for r in rows if r["throughput_gbps"] is not None}
    tcp = by.get("tcp")
    if tcp is None:
        sw, nic = by.get("sw"), by.get("sim-nic")
        if sw is None or nic is None or not sw["host_cpu_s_per_gb"]:
            return "no tcp baseline measured: CPU is not compared"
        return (
            f"no tcp baseline; sim-nic costs "
            f"{nic['host_cpu_s_per_gb'] / sw['host_cpu_s_per_gb']:.2f}{TIMES} the host CPU "
            f"of sw at {nic['throughput_gbps'] / sw['throughput_gbps']:.2f}{TIMES} "
            "its throughput"
        )
    parts = []
    for mode in ("userspace", "sw", "sim-nic", "kernel", "openssl"):
        r = by.get(mode)
        if r is None or r["cpu_vs_tcp"] is None:
            continue
        tp = r["throughput_gbps"] / tcp["throughput_gbps"]
        text = (
            f"{mode} costs {r['cpu_vs_tcp']:.1f}{TIMES} the CPU of tcp "
            f"at {tp:.2f}{TIMES} the throughput"
        )
        if mode == "sim-nic" and r["device_cpu_s_per_gb"]:
            text += f" (+{r['device_cpu_s_per_gb']:.2f} s/GB on the NIC)"
        parts.append(text)
    return "; ".join(parts) if parts else "only tcp measured"
