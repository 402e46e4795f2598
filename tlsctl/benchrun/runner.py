"""A whole bench run: set up, every mode interleaved over the rounds, tear down.

Every mode sends the same file, interleaved per round (tcp, sw, sim-nic,
... then again, the order rotated each round so no mode always runs first
on cold caches), each transfer in a sender process of its own so its CPU
time is its own (:mod:`.senders`).  The loopback receiver is another
process (:mod:`.receiver`); throughput over loopback is bounded by it too,
as it decrypts in Python.

The runner prints nothing: the caller gets :class:`Progress` steps through
``on_progress`` and the results through :meth:`Bench.rows`, complete or, if
the run was cut, partial (what was measured so far).  A run can be cut by
an exception raised in the caller's signal handler at any point
(``tlsctl bench`` raises on SIGINT/SIGTERM): the tear-down then still ends
every process the run started and removes its data directory, inside the
caller's ``shield`` so that a second signal cannot cut the tear-down.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from tlsctl.benchrun.errors import BenchError, ModeUnavailable
from tlsctl.benchrun.job import Job, Target
from tlsctl.benchrun.modes import skip_reason
from tlsctl.benchrun.options import BenchOptions
from tlsctl.benchrun.procs import worker_init
from tlsctl.benchrun.receiver import receiver_main
from tlsctl.benchrun.results import ModeRuns, Result, summarize
from tlsctl.benchrun.senders import run_job
from tlsctl.certs import ephemeral_server_cert


@dataclass(frozen=True)
class Progress:
    """The transfer about to start: ``done`` of ``total`` have run."""

    done: int
    total: int
    round: int  # 1-based
    rounds: int
    mode: str

    def __str__(self) -> str:
        return f"round {self.round}/{self.rounds}: {self.mode}"


class Bench:
    """One run of :class:`BenchOptions`; modes that cannot run here are
    marked skipped (with why) as soon as the object is made."""

    def __init__(self, options: BenchOptions) -> None:
        self.options = options
        self._on_progress: Callable[[Progress], None] = lambda _p: None
        self._shield: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
        remote = options.remote is not None
        self.runs = [
            ModeRuns(m, skip_reason(m, remote=remote, record_size=options.record_size))
            for m in options.modes
        ]

    def rows(self) -> list[dict[str, Any]]:
        """The results so far, one row per mode (:func:`.results.summarize`)."""
        return summarize(self.runs)

    def run(
        self,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        shield: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> list[dict[str, Any]]:
        """Run every round; :class:`BenchError` when a transfer fails or is not
        confirmed (``ConfigError`` for unusable TLS options).

        ``on_progress`` is called before each transfer; ``shield`` wraps the
        tear-down (``StopSignals.shielded``: signals noted, never raised there).
        """
        if on_progress is not None:
            self._on_progress = on_progress
        self._shield = shield
        tmp = tempfile.mkdtemp(prefix="tlsctl-bench-", dir=self.options.data_dir)
        try:
            self._run_in(tmp)
        finally:
            with self._shield():
                shutil.rmtree(tmp, ignore_errors=True)
        return self.rows()

    def _run_in(self, tmp: str) -> None:
        """Certificate, data file, receiver and sender pool, then the rounds.

        The tear-down is shielded: the sender pool and the receiver are
        ended (their own children, ``openssl s_server``, curl and the
        per-connection receivers, die with them), however the run ends.
        """
        o = self.options
        ctx = mp.get_context("fork")
        ck = ephemeral_server_cert()
        cert_pem, key_pem = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_pem, "wb") as f:
            f.write(ck.cert_pem())
        with open(key_pem, "wb") as f:
            f.write(ck.key_pem())
        path = _make_file(tmp, o.size)
        receiver: Any = None
        pool: Any = None
        try:
            if o.remote is not None:
                target = Target(
                    o.remote.host,
                    o.remote.port,
                    None,
                    verify=o.remote.verify,
                    server_name=o.remote.server_name,
                )
            else:
                parent, child = ctx.Pipe()
                receiver = ctx.Process(
                    target=receiver_main,
                    args=(child, o.tls, cert_pem, key_pem, os.getpid()),
                    daemon=True,
                )
                receiver.start()
                if not parent.poll(20):
                    raise BenchError("the receiver process did not start")
                tls_port, tcp_port = parent.recv()
                target = Target("127.0.0.1", tls_port, tcp_port)
            pool = ctx.Pool(o.parallel, initializer=worker_init, initargs=(os.getpid(),))
            self._rounds(pool, target, path, cert_pem, key_pem)
        finally:
            with self._shield():
                _end(pool, receiver)

    def _rounds(self, pool: Any, target: Target, path: str, cert_pem: str, key_pem: str) -> None:
        o = self.options
        active = [r for r in self.runs if r.skipped is None]
        total = len(active) * o.repeat
        done = 0
        for rnd in range(o.repeat):
            # Rotate the order each round: no mode always runs first (cold caches).
            shift = rnd % len(active) if active else 0
            for r in active[shift:] + active[:shift]:
                self._on_progress(Progress(done, total, rnd + 1, o.repeat, r.mode))
                done += 1
                if r.skipped is not None:  # declined in an earlier round
                    continue
                job = Job(
                    r.mode,
                    target,
                    path,
                    o.size,
                    o.seconds,
                    o.record_size,
                    o.tls,
                    faults=o.faults if r.mode == "sim-nic" else None,
                    cert_pem=cert_pem,
                    key_pem=key_pem,
                )
                try:
                    results = _streams(pool, job, o.parallel)
                except ModeUnavailable as exc:
                    # Like kernel without kTLS: say why, measure the rest.
                    r.skipped = str(exc)
                    continue
                r.add(results)


def _streams(pool: Any, job: Job, parallel: int) -> list[Result]:
    """``parallel`` streams of ``job`` at once; each must finish in time."""
    pending = [pool.apply_async(run_job, (job,)) for _ in range(parallel)]
    results = []
    deadline = time.monotonic() + _job_timeout(job.size, job.seconds)
    for p in pending:
        while not p.ready():
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{job.mode}: a sender process did not finish in time (died or stalled)"
                )
            p.wait(0.1)
        results.append(p.get())
    return results


def _make_file(directory: str, size: int) -> str:
    path = os.path.join(directory, "bench.dat")
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.write(chunk[: size % len(chunk)])
    return path


def _end(pool: Any, receiver: Any) -> None:
    """SIGTERM the senders and the receiver and reap them (SIGKILL if one lingers).

    A sender's ``openssl s_server`` and curl, and the receiver's connection
    children, die with their parent (:mod:`.procs`).
    """
    if pool is not None:
        pool.terminate()
        pool.join()
    if receiver is not None:
        receiver.terminate()
        receiver.join(5)
        if receiver.is_alive():
            receiver.kill()
            receiver.join(5)


def _job_timeout(nbytes: int, seconds: float | None) -> float:
    """Generous: 2 MB/s plus a minute, plus the ``seconds``."""
    return 60 + nbytes / 2e6 + 2 * (seconds or 0)
