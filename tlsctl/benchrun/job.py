"""One stream of one mode in one round: what the runner hands a sender process.

Everything in a :class:`Job` is picklable: it crosses into a pool worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from offload.wiremodel import FaultSpec
from tlsctl.tlsconf import TlsOptions


@dataclass(frozen=True)
class Target:
    """Where a sender connects: the loopback receiver, or a remote serve."""

    host: str
    tls_port: int
    tcp_port: int | None  # None: remote (no plain TCP sink there)
    verify: bool = False
    server_name: str | None = None


@dataclass(frozen=True)
class Job:
    """One stream of one mode in one repeat (what a worker process runs)."""

    mode: str
    target: Target
    path: str
    size: int
    seconds: float | None
    record_size: int
    opts: TlsOptions
    faults: FaultSpec | None = None
    cert_pem: str = ""
    key_pem: str = ""


def more(job: Job, t0: float, rounds: int) -> bool:
    """Send the file again? Once, or until ``seconds`` are up."""
    if job.seconds is None:
        return rounds < 1
    return time.monotonic() - t0 < job.seconds
