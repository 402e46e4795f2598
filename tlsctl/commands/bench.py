"""``tlsctl bench``: plain TCP, pyOpenSSL, this layer and a NIC, side by side.

The command parses its options into a :class:`tlsctl.benchrun.BenchOptions`
and runs :class:`tlsctl.benchrun.Bench` (how modes are measured, the JSON
rows' schema: see that package); it owns only what a command owns: usage
errors, signals (Ctrl-C/SIGTERM print the partial results, exit 130/143),
the output (``_bench_output``) and the exit status.
"""

from __future__ import annotations

import os
import sys

import click

from offload.wiremodel import FaultSpec
from tlsctl.benchrun import (
    ALL_MODES,
    DEFAULT_MODES,
    TLS_MAX_RECORD,
    Bench,
    BenchError,
    BenchOptions,
    Remote,
    parse_modes,
)
from tlsctl.commands import _complete as complete
from tlsctl.commands._bench_output import emit, progress_bar
from tlsctl.commands._options import ByteSize, parse_hostport
from tlsctl.exitcodes import CommandFailed, ExitStatus
from tlsctl.signals import Interrupted, StopSignals
from tlsctl.tlsconf import ConfigError, TlsOptions

DATA_DIR_ENV = "TLSCTL_BENCH_DIR"
"""Where the run's temporary data directory is made (default: the system's)."""


@click.command()
@click.option(
    "--size",
    type=ByteSize(),
    default="256M",
    show_default=True,
    metavar="SIZE",
    help="Bytes per stream per transfer (K/M/G suffixes).",
)
@click.option(
    "--time",
    "seconds",
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Resend the file on each connection until SECONDS have passed.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Rounds; modes are interleaved within each round, medians reported.",
)
@click.option(
    "--modes",
    default=",".join(DEFAULT_MODES),
    show_default=True,
    metavar="LIST",
    shell_complete=complete.comma_list(ALL_MODES),
    help=f"Comma-separated, from: {', '.join(ALL_MODES)}.",
)
@click.option(
    "-P",
    "--parallel",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Parallel streams (sender processes) per mode.",
)
@click.option(
    "--record-size",
    type=ByteSize(1, TLS_MAX_RECORD),
    default=TLS_MAX_RECORD,
    show_default=True,
    metavar="BYTES",
    help="Plaintext bytes per TLS record (K suffix too; a mode that cannot run "
    "with it is skipped with the reason: sw/sim-nic need 2, openssl 512, "
    "kernel 16K).",
)
@click.option("--faults", metavar="SPEC", help="Wire faults for sim-nic, e.g. reorder=0.01,seed=1.")
@click.option(
    "-connect",
    "--connect",
    "connect",
    metavar="HOST:PORT",
    help="Send to a running 'tlsctl serve --sink' instead of a loopback receiver.",
)
@click.option("-k", "--insecure", is_flag=True, help="With -connect: do not verify the server.")
@click.option(
    "-CAfile",
    "--CAfile",
    "--cafile",
    "cafile",
    metavar="PEM",
    type=click.Path(dir_okay=False, exists=True),
    help="With -connect: trusted CAs.",
)
@click.option("-tls1_2", "--tls1_2", "--tls1.2", "tls1_2", is_flag=True, help="Only TLS 1.2.")
@click.option("-tls1_3", "--tls1_3", "--tls1.3", "tls1_3", is_flag=True, help="Only TLS 1.3.")
@click.option("-cipher", "--cipher", "cipher", metavar="LIST", help="TLS 1.2 cipher list.")
@click.option(
    "-ciphersuites", "--ciphersuites", "ciphersuites", metavar="LIST", help="TLS 1.3 cipher suites."
)
@click.option("--json", "as_json", is_flag=True, help="JSON list, one object per mode.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, one row per mode.")
def bench(
    size: int,
    seconds: float | None,
    repeat: int,
    modes: str,
    parallel: int,
    record_size: int,
    faults: str | None,
    connect: str | None,
    insecure: bool,
    cafile: str | None,
    tls1_2: bool,
    tls1_3: bool,
    cipher: str | None,
    ciphersuites: str | None,
    as_json: bool,
    as_csv: bool,
) -> None:
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
    try:
        mode_list = parse_modes(modes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--modes") from None
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    fault_spec = None
    if faults is not None:
        if "sim-nic" not in mode_list:
            raise click.UsageError("--faults applies to the sim-nic mode; add it to --modes")
        try:
            fault_spec = FaultSpec.parse(faults)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--faults") from None
    if tls1_2 and tls1_3:
        raise click.UsageError("-tls1_2 and -tls1_3 exclude each other")
    if (insecure or cafile) and not connect:
        raise click.UsageError("-k and -CAfile go with -connect")
    remote = Remote(*parse_hostport(connect), verify=not insecure) if connect else None
    options = BenchOptions(
        size=size,
        modes=mode_list,
        repeat=repeat,
        seconds=seconds,
        parallel=parallel,
        record_size=record_size,
        faults=fault_spec,
        remote=remote,
        tls=TlsOptions(
            tls1_2=tls1_2, tls1_3=tls1_3, cipher=cipher, ciphersuites=ciphersuites, cafile=cafile
        ),
        data_dir=os.environ.get(DATA_DIR_ENV),
    )
    _run(Bench(options), as_json, as_csv)


def _run(run: Bench, as_json: bool, as_csv: bool) -> None:
    """SIGINT and SIGTERM alike: every child process ended, the data
    directory removed (the runner's shielded tear-down), what was measured
    printed, exit 130 / 143."""
    with StopSignals() as stop:
        try:
            with progress_bar() as on_progress:
                run.run(on_progress=on_progress, shield=stop.shielded)
        except Interrupted as exc:
            with stop.shielded():
                emit(run.rows(), as_json, as_csv, partial=True)
                click.echo(f"interrupted by {exc.name}: partial results", err=True)
            sys.exit(int(exc.status))
        except (BenchError, ConfigError) as exc:
            raise CommandFailed(str(exc), ExitStatus.FAILED) from None
        emit(run.rows(), as_json, as_csv, partial=False)
