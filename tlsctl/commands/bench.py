"""``tlsctl bench``: plain TCP, pyOpenSSL, this layer and a NIC, side by side.

Every mode sends the same file, interleaved per repeat (tcp, sw, sim-nic,
... then again), each transfer in a sender process of its own so its CPU
time is its own; timing starts after the handshake.  Host CPU is the
sender's user+sys CPU minus the CPU time spent inside the simulated NIC
driver's ``xmit`` (what hardware would do), which is reported as device
CPU.  (Thread CPU time, not ``KTLSSocket.device_seconds``, which is wall
time and goes wrong when ``-P`` streams outnumber the cores.)  The receiver
is another process; its CPU is reported separately.  Throughput over
loopback is bounded by the receiver too: it decrypts in Python.

Modes:
  tcp           plain TCP from the same program (readinto + sendall)
  tcp-sendfile  plain TCP with the kernel's zero-copy sendfile (reference)
  userspace     pyOpenSSL's own record layer (SSL_write): two passes over the data
  sw            this layer in software (--offload sw)
  sim-nic       this layer with TX on the simulated offload NIC (--faults applies)
  kernel        the host kernel's kTLS (skipped where the kernel has none)
  openssl       openssl s_server -WWW serving the file, curl fetching it

JSON schema (``--json``; stable): a list with one object per mode, in the
order run::

  {"mode": str,                      # one of the modes above
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

``--csv`` has the same fields as columns.  ``--record-size`` sets the
plaintext per record for userspace/sw/sim-nic/openssl (``KTLSSocket``
``record_size``, SSL_write size, ``s_server -max_send_frag``); the kernel
mode needs 16384.
"""

from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import click

from offload.kernel import kernel_has_ktls
from tlsctl import units
from tlsctl.addresses import is_ip
from tlsctl.commands._bench_run import (
    TLS_MAX_RECORD,
    BenchError,
    Job,
    ModeUnavailable,
    Result,
    Target,
    receiver_main,
    run_job,
    worker_init,
)
from tlsctl.commands._options import parse_hostport
from tlsctl.commands._signals import Interrupted, StopSignals
from tlsctl.commands._tlsconf import ConfigError, TlsOptions

ALL_MODES = ("tcp", "tcp-sendfile", "userspace", "sw", "sim-nic", "kernel", "openssl")
DEFAULT_MODES = ("tcp", "userspace", "sw", "sim-nic", "kernel", "openssl")

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
"""Field name -> allowed Python types of one ``--json`` object."""


def parse_size(text: str) -> int:
    """``4096``, ``64K``, ``256M``, ``1G`` (:func:`tlsctl.units.parse_size`)."""
    try:
        return units.parse_size(text, minimum=1)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in ALL_MODES]
    if bad or not modes:
        raise click.BadParameter(
            f"unknown mode {', '.join(bad) or '(none)'}; choose from {', '.join(ALL_MODES)}",
            param_hint="--modes")
    return list(dict.fromkeys(modes))


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
    """The ``--json`` objects (see the module docstring)."""
    tcp = next((r for r in runs if r.mode == "tcp" and r.host), None)
    tcp_cpu = statistics.median(tcp.host) if tcp else None
    out: list[dict[str, Any]] = []
    for r in runs:
        host = _med(r.host)
        out.append({
            "mode": r.mode,
            "throughput_gbps": _med(r.gbps),
            "throughput_gbps_min": round(min(r.gbps), 4) if r.gbps else None,
            "throughput_gbps_max": round(max(r.gbps), 4) if r.gbps else None,
            "host_cpu_s_per_gb": host,
            "device_cpu_s_per_gb": _med(r.device),
            "receiver_cpu_s_per_gb": _med(r.receiver),
            "cpu_vs_tcp": (round(statistics.median(r.host) / tcp_cpu, 3)
                           if tcp_cpu and r.host else None),
            "bytes": r.bytes,
            "repeats": len(r.gbps),
            "confirmed": r.confirmed,
            "skipped": r.skipped,
        })
    return out


def headline(rows: list[dict[str, Any]]) -> str:
    """The comparison in plain words, from whatever modes ran."""
    by = {r["mode"]: r for r in rows if r["throughput_gbps"] is not None}
    tcp = by.get("tcp")
    if tcp is None:
        sw, nic = by.get("sw"), by.get("sim-nic")
        if sw is None or nic is None or not sw["host_cpu_s_per_gb"]:
            return "no tcp baseline measured: CPU is not compared"
        return (f"no tcp baseline; sim-nic offload costs "
                f"{nic['host_cpu_s_per_gb'] / sw['host_cpu_s_per_gb']:.2f}{TIMES} the host CPU "
                f"of sw TLS at {nic['throughput_gbps'] / sw['throughput_gbps']:.2f}{TIMES} "
                "its throughput")
    parts = []
    for mode, label in (("userspace", "pyOpenSSL TLS"), ("sw", "sw TLS"),
                        ("sim-nic", "sim-nic offload"), ("kernel", "kernel kTLS"),
                        ("openssl", "openssl s_server")):
        r = by.get(mode)
        if r is None or r["cpu_vs_tcp"] is None:
            continue
        tp = r["throughput_gbps"] / tcp["throughput_gbps"]
        text = (f"{label} costs {r['cpu_vs_tcp']:.1f}{TIMES} the CPU of TCP "
                f"at {tp:.2f}{TIMES} the throughput")
        if mode == "sim-nic" and r["device_cpu_s_per_gb"]:
            text += f" (+{r['device_cpu_s_per_gb']:.2f} s/GB on the NIC)"
        parts.append(text)
    return "; ".join(parts) if parts else "only tcp measured"


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(rows: list[dict[str, Any]], partial: bool) -> None:
    """Rich table, bar chart and headline on stdout."""
    from rich.console import Console
    from rich.table import Table

    # Piped: wide enough for the table rather than rich's 80 columns.
    con = Console() if sys.stdout.isatty() else Console(width=110)
    title = "tlsctl bench" + (" (interrupted: partial results)" if partial else "")
    t = Table(title=title)
    t.add_column("mode", no_wrap=True)
    for name in ("GB/s", "min-max", "host s/GB", "dev s/GB", "recv s/GB", f"CPU{TIMES}tcp",
                 "repeats"):
        t.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        if r["skipped"]:
            continue
        span = (f"{r['throughput_gbps_min']:.2f}-{r['throughput_gbps_max']:.2f}"
                if r["throughput_gbps_min"] is not None else "-")
        t.add_row(r["mode"], _fmt(r["throughput_gbps"], ".3f"), span,
                  _fmt(r["host_cpu_s_per_gb"], ".3f"), _fmt(r["device_cpu_s_per_gb"], ".3f"),
                  _fmt(r["receiver_cpu_s_per_gb"], ".3f"), _fmt(r["cpu_vs_tcp"], ".2f"),
                  str(r["repeats"]))
    con.print(t)
    for r in rows:
        if r["skipped"]:
            con.print(f"{r['mode']}: skipped: {r['skipped']}", highlight=False)
    ran = [r for r in rows if r["throughput_gbps"] is not None]
    if ran:
        width = 20
        top_tp = max(r["throughput_gbps"] for r in ran) or 1.0
        top_cpu = max((r["host_cpu_s_per_gb"] or 0) + (r["device_cpu_s_per_gb"] or 0)
                      for r in ran) or 1.0
        chart = Table(title="throughput (GB/s) and CPU per GB (host █, device ▒)",
                      show_edge=False, box=None)
        chart.add_column("mode", no_wrap=True)
        chart.add_column("throughput", no_wrap=True)
        chart.add_column("CPU s/GB", no_wrap=True)
        for r in ran:
            tp_bar = "█" * max(1, round(width * r["throughput_gbps"] / top_tp))
            host = max(0.0, r["host_cpu_s_per_gb"] or 0.0)
            dev = r["device_cpu_s_per_gb"] or 0.0
            cpu_bar = "█" * round(width * host / top_cpu) + "▒" * round(width * dev / top_cpu)
            chart.add_row(r["mode"], f"[cyan]{tp_bar}[/] {r['throughput_gbps']:.2f}",
                          f"[magenta]{cpu_bar}[/] {host + dev:.2f}")
        con.print(chart)
    con.print(headline(rows))


def _write_csv(rows: list[dict[str, Any]]) -> None:
    w = csv.DictWriter(sys.stdout, fieldnames=list(SCHEMA), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None else v for k, v in r.items()})


def _skip_reason(mode: str, remote: bool, record_size: int, openssl_ok: str | None) -> str | None:
    if remote and mode in ("tcp", "tcp-sendfile", "openssl"):
        return "needs the bench's own receiver (loopback only)"
    if mode == "kernel":
        ok, why = kernel_has_ktls()
        if not ok:
            return f"no kernel kTLS here: {why}" if why else "no kernel kTLS here"
        if record_size != TLS_MAX_RECORD:
            return "--record-size needs the user-space layer"
    if mode == "openssl":
        return openssl_ok
    return None


def _make_file(directory: str, size: int) -> str:
    path = os.path.join(directory, "bench.dat")
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.write(chunk[: size % len(chunk)])
    return path


@click.command()
@click.option("--size", default="256M", show_default=True, metavar="SIZE",
              help="Bytes per stream per transfer (K/M/G suffixes).")
@click.option("--time", "seconds", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="Resend the file on each connection until SECONDS have passed.")
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True,
              help="Rounds; modes are interleaved within each round, medians reported.")
@click.option("--modes", default=",".join(DEFAULT_MODES), show_default=True, metavar="LIST",
              help=f"Comma-separated, from: {', '.join(ALL_MODES)}.")
@click.option("-P", "--parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Parallel streams (sender processes) per mode.")
@click.option("--record-size", type=click.IntRange(1, TLS_MAX_RECORD), default=TLS_MAX_RECORD,
              show_default=True, help="Plaintext bytes per TLS record.")
@click.option("--faults", metavar="SPEC",
              help="Wire faults for sim-nic, e.g. reorder=0.01,seed=1.")
@click.option("-connect", "--connect", "connect", metavar="HOST:PORT",
              help="Send to a running 'tlsctl serve --sink' instead of a loopback receiver.")
@click.option("-k", "--insecure", is_flag=True, help="With -connect: do not verify the server.")
@click.option("-CAfile", "--CAfile", "--cafile", "cafile", metavar="PEM",
              type=click.Path(dir_okay=False, exists=True), help="With -connect: trusted CAs.")
@click.option("-tls1_2", "--tls1_2", "--tls1.2", "tls1_2", is_flag=True, help="Only TLS 1.2.")
@click.option("-tls1_3", "--tls1_3", "--tls1.3", "tls1_3", is_flag=True, help="Only TLS 1.3.")
@click.option("-cipher", "--cipher", "cipher", metavar="LIST", help="TLS 1.2 cipher list.")
@click.option("-ciphersuites", "--ciphersuites", "ciphersuites", metavar="LIST",
              help="TLS 1.3 cipher suites.")
@click.option("--json", "as_json", is_flag=True, help="JSON list, one object per mode.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, one row per mode.")
def bench(size: str, seconds: float | None, repeat: int, modes: str, parallel: int,
          record_size: int, faults: str | None, connect: str | None, insecure: bool,
          cafile: str | None, tls1_2: bool, tls1_3: bool, cipher: str | None,
          ciphersuites: str | None, as_json: bool, as_csv: bool) -> None:
    """Measure throughput and CPU per GB of TCP, TLS in user space and offload.

    Runs every mode on the same data, interleaved over --repeat rounds,
    against a receiver process it starts itself (or a remote
    'tlsctl serve --sink' with -connect, like iperf3).  Host CPU is the
    sender's CPU minus the simulated NIC's (device CPU); the receiver's CPU
    is shown apart.  Ctrl-C prints what was measured so far, exit status 130.

    \b
    --json: a list, one object per mode, with the keys
      mode, throughput_gbps, throughput_gbps_min, throughput_gbps_max (GB/s,
      1 GB = 1e9 B; median/min/max over repeats), host_cpu_s_per_gb,
      device_cpu_s_per_gb, receiver_cpu_s_per_gb, cpu_vs_tcp (floats or
      null), bytes, repeats (ints), confirmed ("count": the receiver's byte
      count matched; "close_notify": a remote serve read everything), skipped
      (null, or why the mode did not run).  --csv: the same columns.

    \b
    Examples:
      tlsctl bench --size 16M --repeat 1
      tlsctl bench --size 64M --modes tcp,sw,sim-nic --faults reorder=0.01,seed=1
      tlsctl bench --size 8M --json --modes tcp,sw
      tlsctl serve -accept 4433 --sink &       # then, from this or another host:
      tlsctl bench -connect localhost:4433 -k --size 64M --modes sw,sim-nic
    """
    nbytes = parse_size(size)
    mode_list = parse_modes(modes)
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    if faults is not None:
        from offload.wiremodel import FaultSpec

        if "sim-nic" not in mode_list:
            raise click.UsageError("--faults applies to the sim-nic mode; add it to --modes")

        try:
            FaultSpec.parse(faults)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--faults") from None
    opts = TlsOptions(tls1_2=tls1_2, tls1_3=tls1_3, cipher=cipher, ciphersuites=ciphersuites,
                      cafile=cafile)
    if tls1_2 and tls1_3:
        raise click.UsageError("-tls1_2 and -tls1_3 exclude each other")
    if (insecure or cafile) and not connect:
        raise click.UsageError("-k and -CAfile go with -connect")
    openssl_ok = None
    missing = [t for t in ("openssl", "curl") if shutil.which(t) is None]
    if missing:
        openssl_ok = f"{' and '.join(missing)} not found"
    runs = [ModeRuns(m, _skip_reason(m, connect is not None, record_size, openssl_ok))
            for m in mode_list]
    # SIGINT and SIGTERM alike: end every child process, remove the data
    # directory, print what was measured, exit 130 / 143.
    with StopSignals() as stop:
        try:
            _run(runs, nbytes, seconds, repeat, parallel, record_size, faults, connect,
                 insecure, opts, stop)
        except Interrupted as exc:
            with stop.shielded():
                _output(runs, as_json, as_csv, partial=True)
                click.echo(f"interrupted by {exc.name}: partial results", err=True)
            sys.exit(int(exc.status))
        except (BenchError, ConfigError) as exc:
            raise click.ClickException(str(exc)) from None
        _output(runs, as_json, as_csv, partial=False)


def _output(runs: list[ModeRuns], as_json: bool, as_csv: bool, partial: bool) -> None:
    rows = summarize(runs)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif as_csv:
        _write_csv(rows)
    else:
        render(rows, partial)
    sys.stdout.flush()


def _run(runs: list[ModeRuns], nbytes: int, seconds: float | None, repeat: int,
         parallel: int, record_size: int, faults: str | None, connect: str | None,
         insecure: bool, opts: TlsOptions, stop: StopSignals) -> None:
    """Set up (data file, certificate, receiver, sender pool), run, tear down.

    The tear-down is shielded from signals: the sender pool and the receiver
    are ended (their own children, ``openssl s_server``, curl and the
    per-connection receivers, die with them), then the data directory is
    removed, however the run ends.
    """
    tmp = tempfile.mkdtemp(prefix="tlsctl-bench-", dir=os.environ.get("TLSCTL_BENCH_DIR"))
    try:
        _run_in(tmp, runs, nbytes, seconds, repeat, parallel, record_size, faults, connect,
                insecure, opts, stop)
    finally:
        with stop.shielded():
            shutil.rmtree(tmp, ignore_errors=True)


def _run_in(tmp: str, runs: list[ModeRuns], nbytes: int, seconds: float | None, repeat: int,
            parallel: int, record_size: int, faults: str | None, connect: str | None,
            insecure: bool, opts: TlsOptions, stop: StopSignals) -> None:
    from tlsctl.commands._certs import ephemeral_server_cert

    active = [r for r in runs if r.skipped is None]
    ctx = mp.get_context("fork")
    ck = ephemeral_server_cert()
    cert_pem, key_pem = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    with open(cert_pem, "wb") as f:
        f.write(ck.cert_pem())
    with open(key_pem, "wb") as f:
        f.write(ck.key_pem())
    path = _make_file(tmp, nbytes)
    receiver: Any = None
    pool: Any = None
    try:
        if connect:
            host, port = parse_hostport(connect)
            target = Target(host, port, None, verify=not insecure,
                            server_name=None if is_ip(host) else host)
        else:
            parent, child = ctx.Pipe()
            receiver = ctx.Process(target=receiver_main,
                                   args=(child, opts, cert_pem, key_pem, os.getpid()),
                                   daemon=True)
            receiver.start()
            if not parent.poll(20):
                raise BenchError("the receiver process did not start")
            tls_port, tcp_port = parent.recv()
            target = Target("127.0.0.1", tls_port, tcp_port)
        pool = ctx.Pool(parallel, initializer=worker_init, initargs=(os.getpid(),))
        with _progress(len(active) * repeat) as advance:
            for rnd in range(repeat):
                # Rotate the order each round: no mode always runs first (cold caches).
                shift = rnd % len(active) if active else 0
                for r in active[shift:] + active[:shift]:
                    advance(f"round {rnd + 1}/{repeat}: {r.mode}")
                    job = Job(r.mode, target, path, nbytes, seconds, record_size, opts,
                              faults=faults if r.mode == "sim-nic" else None,
                              cert_pem=cert_pem, key_pem=key_pem)
                    if r.skipped is not None:
                        continue
                    pending = [pool.apply_async(run_job, (job,)) for _ in range(parallel)]
                    results = []
                    deadline = time.monotonic() + _job_timeout(nbytes, seconds)
                    try:
                        for p in pending:
                            while not p.ready():
                                if time.monotonic() > deadline:
                                    raise BenchError(f"{r.mode}: a sender process did "
                                                     "not finish in time (died or stalled)")
                                p.wait(0.1)
                            results.append(p.get())
                    except ModeUnavailable as exc:
                        # Like kernel without kTLS: say why, measure the rest.
                        r.skipped = str(exc)
                        continue
                    r.add(results)
    finally:
        with stop.shielded():
            _end(pool, receiver)


def _end(pool: Any, receiver: Any) -> None:
    """SIGTERM the senders and the receiver and reap them (SIGKILL if one lingers).

    A sender's ``openssl s_server`` and curl, and the receiver's connection
    children, die with their parent (PR_SET_PDEATHSIG, see
    ``_bench_run.die_with_parent``).
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
    """Generous: 2 MB/s plus a minute, plus the --time."""
    return 60 + nbytes / 2e6 + 2 * (seconds or 0)


@contextlib.contextmanager
def _progress(total: int) -> Any:
    """A rich progress bar on stderr when it is a terminal; else nothing."""
    if not sys.stderr.isatty():
        yield lambda _desc: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), TimeElapsedColumn(), console=Console(stderr=True),
                  transient=True) as prog:
        task = prog.add_task("starting", total=total)
        first = [True]

        def advance(desc: str) -> None:
            if not first[0]:
                prog.advance(task)
            first[0] = False
            prog.update(task, description=desc)

        yield advance
        prog.advance(task)

