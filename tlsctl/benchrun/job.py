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
    interval: float | None = None
    """``-i``: interval reports every this many seconds."""
    round_no: int = 1
    nic_control: str | None = None
    """``--wire netns``: the NIC process's control socket (sim-nic's TX path
    is then ``offload.netwire.NetTxPath``, not the in-process wire model)."""
    reverse: bool = False
    """``-R``: this job's client receives; the bench's server sends."""


STEP = 1 << 20
"""Bytes per write when the clock matters (``-t``, ``-i``): how often the
time bound and the interval boundaries are looked at."""


def more(job: Job, t0: float, rounds: int) -> bool:
    """Send the file again? Once, or until ``seconds`` are up."""
    if job.seconds is None:
        return rounds < 1
    return not time_up(job, t0)


def time_up(job: Job, t0: float) -> bool:
    """The ``-t`` bound has passed (never without one)."""
    return job.seconds is not None and time.monotonic() - t0 >= job.seconds


def step(job: Job) -> int:
    """Bytes per write: the whole file at once unless ``-t``/``-i`` need the
    clock looked at (then :data:`STEP`), so a plain run writes as before."""
    if job.seconds is None and job.interval is None:
        return job.size
    return min(STEP, job.size)
