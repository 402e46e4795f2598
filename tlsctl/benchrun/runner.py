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

from tlsctl.benchrun import rxbench
from tlsctl.benchrun.errors import BenchError, ModeUnavailable
from tlsctl.benchrun.intervals import Interval
from tlsctl.benchrun.job import Job, Target
from tlsctl.benchrun.modes import skip_reason
from tlsctl.benchrun.options import BenchOptions
from tlsctl.benchrun.procs import worker_init
from tlsctl.benchrun.receiver import receiver_main
from tlsctl.benchrun.results import ModeRuns, Result, summarize
from tlsctl.benchrun.reverse import ReverseResults, reverse_server_main
from tlsctl.benchrun.senders import run_job
from tlsctl.benchrun.wire import BenchWire, counters_delta
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
        self._on_interval: Callable[[str, Interval], None] | None = None
        self._shield: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
        self._wire: BenchWire | None = None
        self._reverse: ReverseResults | None = None
        self._rx: rxbench.RxStream | None = None
        self._live: Any = None
        remote = options.remote is not None
        self.runs = [
            ModeRuns(
                m,
                skip_reason(
                    m,
                    remote=remote,
                    record_size=options.record_size,
                    wire=options.wire,
                    reverse=options.reverse,
                    direction=options.direction,
                ),
                direction=options.direction,
            )
            for m in options.modes
        ]

    def rows(self) -> list[dict[str, Any]]:
        """The results so far, one row per mode (:func:`.results.summarize`)."""
        return summarize(self.runs)

    def run(
        self,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_interval: Callable[[str, Interval], None] | None = None,
        shield: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> list[dict[str, Any]]:
        """Run every round; :class:`BenchError` when a transfer fails or is not
        confirmed (``ConfigError`` for unusable TLS options).

        ``on_progress`` is called before each transfer; ``on_interval`` (mode,
        interval) as each ``-i`` interval ends, while the transfer runs;
        ``shield`` wraps the tear-down (``StopSignals.shielded``: signals
        noted, never raised there).
        """
        if on_progress is not None:
            self._on_progress = on_progress
        self._on_interval = on_interval
        self._shield = shield
        tmp = tempfile.mkdtemp(prefix="tlsctl-bench-", dir=self.options.data_dir)
        try:
            if self.options.wire == "netns" and any(r.skipped is None for r in self.runs):
                # Built before the processes that live in its namespaces;
                # torn down after them, shielded like the rest of the tear-down.
                self._wire = BenchWire(self.options.wire_faults).__enter__()
                try:
                    self._run_in(tmp)
                finally:
                    wire, self._wire = self._wire, None
                    with self._shield():
                        wire.close()
            else:
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
        if o.direction == "rx":
            self._run_rx(ctx, tmp)
            return
        ck = ephemeral_server_cert()
        cert_pem, key_pem = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_pem, "wb") as f:
            f.write(ck.cert_pem())
        with open(key_pem, "wb") as f:
            f.write(ck.key_pem())
        path = _make_file(tmp, o.size)
        receiver: Any = None
        pool: Any = None
        wire = self._wire
        live = ctx.SimpleQueue() if o.interval is not None else None
        self._live = live
        try:
            if o.reverse:
                parent, child = ctx.Pipe()
                results = ctx.SimpleQueue()
                template = self._job("tcp", Target("127.0.0.1", 0, 0), path, cert_pem, key_pem, 1)
                receiver = ctx.Process(
                    target=reverse_server_main,
                    args=(child, template, results, os.getpid()),
                    daemon=True,
                )
                receiver.start()
                if not parent.poll(20):
                    raise BenchError("the reverse server process did not start")
                ports: dict[str, int] = parent.recv()
                self._reverse = ReverseResults(results, ports)
                target = Target("127.0.0.1", 0, 0)
            elif o.remote is not None:
                target = Target(
                    o.remote.host,
                    o.remote.port,
                    None,
                    verify=o.remote.verify,
                    server_name=o.remote.server_name,
                )
            else:
                parent, child = ctx.Pipe()
                host = wire.addr("rx") if wire is not None else "127.0.0.1"
                receiver = ctx.Process(
                    target=receiver_main,
                    args=(child, o.tls, cert_pem, key_pem, os.getpid()),
                    kwargs={
                        "host": host,
                        "netns": wire.namespace("rx") if wire is not None else None,
                    },
                    daemon=True,
                )
                receiver.start()
                if not parent.poll(20):
                    raise BenchError("the receiver process did not start")
                tls_port, tcp_port = parent.recv()
                target = Target(host, tls_port, tcp_port)
            pool = ctx.Pool(
                o.parallel,
                initializer=worker_init,
                initargs=(os.getpid(), live, wire.namespace("tx") if wire is not None else None),
            )
            self._rounds(pool, target, path, cert_pem, key_pem)
        finally:
            with self._shield():
                _end(pool, receiver)

    def _run_rx(self, ctx: Any, tmp: str) -> None:
        """``direction="rx"``: the sealed stream, its sender, one receiving
        worker; the same rounds (:mod:`.rxbench`)."""
        o = self.options
        self._rx = rxbench.stream_for(o.tls, o.size, o.rx_resync)
        path = os.path.join(tmp, "bench.tls")
        rxbench.seal_stream(path, self._rx.info, o.size, o.record_size)
        sender: Any = None
        pool: Any = None
        try:
            parent, child = ctx.Pipe()
            sender = ctx.Process(
                target=rxbench.sender_main, args=(child, path, os.getpid()), daemon=True
            )
            sender.start()
            if not parent.poll(20):
                raise BenchError("the RX sender process did not start")
            port = int(parent.recv())
            pool = ctx.Pool(1, initializer=worker_init, initargs=(os.getpid(),))
            self._rounds(pool, Target("127.0.0.1", port, port), path, "", "")
        finally:
            with self._shield():
                _end(pool, sender)

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
                job = self._job(r.mode, target, path, cert_pem, key_pem, rnd + 1)
                wire = self._wire
                nic0 = wire.nic_cpu() if wire is not None else None
                c0 = wire.counters() if wire is not None and r.mode == "sim-nic" else None
                try:
                    results = self._streams(pool, job)
                except ModeUnavailable as exc:
                    # Like kernel without kTLS: say why, measure the rest.
                    r.skipped = str(exc)
                    continue
                if wire is None or nic0 is None:
                    r.add(results)
                    continue
                c1 = wire.counters() if c0 is not None else None
                delta = counters_delta(c0, c1) if c0 is not None and c1 is not None else None
                r.add(results, nic_cpu=wire.nic_cpu() - nic0, counters=delta)

    def _job(
        self, mode: str, target: Target, path: str, cert_pem: str, key_pem: str, round_no: int
    ) -> Job:
        o = self.options
        if self._reverse is not None and mode in self._reverse.ports:
            target = Target(target.host, self._reverse.ports[mode], self._reverse.ports[mode])
        return Job(
            mode,
            target,
            path,
            o.size,
            o.seconds,
            o.record_size,
            o.tls,
            faults=o.faults if mode == "sim-nic" else None,
            cert_pem=cert_pem,
            key_pem=key_pem,
            interval=o.interval,
            round_no=round_no,
            nic_control=self._wire.control if self._wire is not None else None,
            reverse=o.reverse,
        )

    def _streams(self, pool: Any, job: Job) -> list[Result]:
        """``parallel`` streams of ``job`` at once; each must finish in time.
        Interval lines are handed on as they come; with ``-R`` each stream's
        result is the client's joined with its server's."""
        parallel = self.options.parallel
        if self._rx is not None:  # the receiver is measured: one stream
            args = (job.mode, job.target.tls_port, self._rx, job.faults)
            pending = [pool.apply_async(rxbench.receive, args)]
        else:
            pending = [pool.apply_async(run_job, (job, i + 1)) for i in range(parallel)]
        results = []
        deadline = time.monotonic() + _job_timeout(job.size, job.seconds)
        for p in pending:
            while not p.ready():
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{job.mode}: a sender process did not finish in time (died or stalled)"
                    )
                p.wait(0.1)
                self._pass_intervals(job.mode)
            try:
                results.append(p.get())
            except BenchError:
                better = self._reverse.failure(2.0) if self._reverse is not None else None
                if better is None:
                    raise
                raise better from None
        self._pass_intervals(job.mode)
        if self._reverse is not None:
            results = [self._reverse.join(r, deadline) for r in results]
        return results

    def _pass_intervals(self, mode: str) -> None:
        q = self._live
        while q is not None and not q.empty():
            iv = q.get()
            if self._on_interval is not None:
                self._on_interval(mode, iv)


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
