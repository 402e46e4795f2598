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

from offload.netwire.faults import WireFaults
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
from tlsctl.benchrun.modes import RX_MODES
from tlsctl.benchrun.options import DIRECTIONS, WIRES
from tlsctl.commands import _complete as complete
from tlsctl.commands._bench_output import emit, emit_error, interval_printer, progress_bar
from tlsctl.commands._options import ByteSize, parse_hostport
from tlsctl.exitcodes import CommandFailed, ExitStatus
from tlsctl.signals import Interrupted, StopSignals
from tlsctl.tlsconf import ConfigError, TlsOptions
from tlsctl.units import RATE_FORMATS

DATA_DIR_ENV = "TLSCTL_BENCH_DIR"
"""Where the run's temporary data directory is made (default: the system's)."""


class JsonErrors(click.Command):
    """With ``--json``, a usage error is also a JSON object on stdout
    (``{"error": {"message": ..., "option": ...}}``), as every other error
    is (:func:`_run`); click's usage line still goes to stderr, exit 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        wants_json = "--json" in args
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if wants_json:
                emit_error(exc.format_message(), _option_of(exc))
            raise


def _option_of(exc: click.UsageError) -> str | None:
    """The option a usage error is about (its longest spelling), if it names one."""
    if isinstance(exc, click.BadParameter):
        if exc.param_hint is not None:
            hint = exc.param_hint
            return hint if isinstance(hint, str) else " / ".join(hint)
        if exc.param is not None:
            return max(exc.param.opts, key=len) if exc.param.opts else exc.param.name
    if isinstance(exc, click.NoSuchOption):
        return exc.option_name
    return None


@click.command(cls=JsonErrors)
@click.option(
    "-n",
    "--size",
    type=ByteSize(),
    default="256M",
    show_default=True,
    metavar="SIZE",
    help="Bytes per stream per transfer (K/M/G suffixes): the bound of a run "
    "(iperf3's -n); with -t, the data file sent over and over.",
)
@click.option(
    "-t",
    "--time",
    "seconds",
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Time-bounded: send for SECONDS per stream (iperf3's -t), resending the "
    "--size file; the bytes moved are counted and confirmed as always.",
)
@click.option(
    "-i",
    "--interval",
    type=click.FloatRange(min=0.05),
    metavar="SECONDS",
    help="Report every SECONDS: interval, bytes, bitrate per stream (as iperf3 "
    "-i), in --json an 'intervals' array per row (null for openssl: curl "
    "fetches whole files).",
)
@click.option(
    "-R",
    "--reverse",
    is_flag=True,
    help="Reverse: the bench's server sends and its client receives (loopback; "
    "not openssl, whose s_server -WWW takes no upload).",
)
@click.option(
    "-f",
    "--format",
    "rate_format",
    type=click.Choice(list(RATE_FORMATS)),
    metavar="[kmgtKMGT]",
    help="Rate unit of the table and interval lines, as iperf3: k/m/g/t bits per "
    "second (1000s), K/M/G/T bytes per second (1024s).  Default: bits per second "
    "in the unit that suits.",
)
@click.option(
    "--wire",
    type=click.Choice(WIRES),
    default="model",
    show_default=True,
    help="model: loopback, sim-nic behind the in-process wire model; netns: every "
    "mode over the real wire (two network namespaces, the NIC in its own "
    "process; root and /dev/net/tun).",
)
@click.option(
    "--direction",
    type=click.Choice(DIRECTIONS),
    default="tx",
    show_default=True,
    help="tx: the sending host's CPU (the senders'); rx: the receiving host's "
    "CPU for tcp, sw and sim-nic (the NIC decrypting; --faults apply to it), "
    "one loopback stream of pre-sealed records on the model wire.",
)
@click.option(
    "--rx-resync",
    type=click.Choice(("driver", "core", "async")),
    default="driver",
    show_default=True,
    help="With --direction rx: the sim-nic's RX resync scheme (DRIVER_REQ, "
    "CORE_NEXT_HINT, DRIVER_REQ_ASYNC).",
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
    metavar="LIST",
    shell_complete=complete.comma_list(ALL_MODES),
    help=f"Comma-separated, from: {', '.join(ALL_MODES)}.  [default: "
    f"{','.join(DEFAULT_MODES)}; with --direction rx: {','.join(RX_MODES)}]",
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
@click.option(
    "--faults",
    metavar="SPEC",
    help="Wire faults for sim-nic, e.g. reorder=0.01,seed=1; with --wire netns, the "
    "real wire's (drop=0.01,dup=...,seed=N, every mode, both directions).",
)
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
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="JSON list, one object per mode; on an error a JSON error object.",
)
@click.option("--csv", "as_csv", is_flag=True, help="CSV, one row per mode.")
def bench(
    size: int,
    seconds: float | None,
    interval: float | None,
    reverse: bool,
    rate_format: str | None,
    wire: str,
    direction: str,
    rx_resync: str,
    repeat: int,
    modes: str | None,
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
    is shown apart.  With --direction rx the host is the receiver: its CPU
    minus the sim-nic's RX decryption (device CPU, beside it), for tcp, sw
    and sim-nic.  With -R the sender is the bench's server; with --wire
    netns the NIC is a process of its own and device CPU is its CPU, beside
    the host's, not subtracted (read from /proc in 10 ms ticks: use --size
    64M or more).  Ctrl-C prints what was measured so far, exit status 130.

    \b
    --json: a list, one object per mode, with the keys
      mode; direction ("tx" or "rx": whose CPU host_cpu_s_per_gb is);
      bytes_per_second, bits_per_second (numbers: bytes and bits per
      second, median over repeats) and their _min/_max; host_cpu_s_per_gb,
      device_cpu_s_per_gb, receiver_cpu_s_per_gb (CPU seconds per GB,
      1 GB = 10^9 bytes), cpu_vs_tcp (numbers or null); bytes, repeats
      (ints); confirmed ("count": the receiver's byte count matched;
      "close_notify": a remote serve read everything); skipped (null, or
      why the mode did not run); intervals (-i: a list of {round, stream,
      start, end, bytes, bits_per_second}; else null); device_counters (the
      NIC's counters for sim-nic; else null).  --csv: the scalar columns.
      An error: {"error": {"message": ..., "option": ... or null}}.

    \b
    Examples:
      tlsctl bench --size 16M --repeat 1
      tlsctl bench --size 64M --modes tcp,sw,sim-nic --faults reorder=0.01,seed=1
      tlsctl bench --size 8M --json --modes tcp,sw
      tlsctl bench -t 5 -i 1 --size 16M --repeat 1 --modes tcp,sw,sim-nic
      tlsctl bench -R --size 64M --modes tcp,sw,sim-nic -f M
      tlsctl bench --direction rx --size 128M --modes tcp,sw,sim-nic --repeat 3
      tlsctl bench --direction rx --modes tcp,sim-nic --faults drop=0.01,seed=1
      sudo tlsctl bench --wire netns --size 256M --modes tcp,sw,sim-nic
      tlsctl serve -accept 4433 --sink &       # then, from this or another host:
      tlsctl bench -connect localhost:4433 -k --size 64M --modes sw,sim-nic
    """
    try:
        options = _options(
            size, seconds, interval, reverse, wire, repeat, modes, parallel, record_size,
            faults, connect, insecure, cafile, tls1_2, tls1_3, cipher, ciphersuites,
            as_json, as_csv, direction, rx_resync,
        )  # fmt: skip
    except click.UsageError as exc:
        if as_json:
            emit_error(exc.format_message(), _option_of(exc))
        raise
    if wire == "netns":
        from offload.netwire.netns import unavailable_reason

        why = unavailable_reason()
        if why:
            if as_json:
                emit_error(why, "--wire")
            raise CommandFailed(why, ExitStatus.FAILED)
    _run(Bench(options), as_json, as_csv, rate_format)


def _options(
    size: int,
    seconds: float | None,
    interval: float | None,
    reverse: bool,
    wire: str,
    repeat: int,
    modes: str | None,
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
    direction: str = "tx",
    rx_resync: str = "driver",
) -> BenchOptions:
    """The options as a :class:`BenchOptions`; usage errors naming the option."""
    try:
        if modes is None:
            modes = ",".join(RX_MODES if direction == "rx" else DEFAULT_MODES)
        mode_list = parse_modes(modes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--modes") from None
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    fault_spec = None
    wire_faults = ""
    if faults is not None and wire == "netns":
        try:
            WireFaults.parse(faults)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--faults") from None
        wire_faults = faults
    elif faults is not None:
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
    if connect and reverse:
        raise click.BadParameter(
            "a 'serve --sink' only receives; -R needs the bench's own server (no -connect)",
            param_hint="-R",
        )
    if connect and wire != "model":
        raise click.BadParameter(
            "-connect sends over the network there is; --wire netns builds its own",
            param_hint="--wire",
        )
    if reverse and wire != "model":
        raise click.BadParameter(
            "-R runs on loopback only (the NIC offloads the sender namespace's TX)",
            param_hint="-R",
        )
    if direction == "rx":
        for given, name in (
            (reverse, "-R"),
            (connect, "-connect"),
            (wire != "model", "--wire"),
            (seconds is not None, "--time"),
            (interval is not None, "--interval"),
            (parallel != 1, "--parallel"),
        ):
            if given:
                raise click.BadParameter(
                    "--direction rx measures one loopback stream on the model wire",
                    param_hint=name,
                )
    elif rx_resync != "driver":
        raise click.UsageError("--rx-resync goes with --direction rx")
    remote = Remote(*parse_hostport(connect), verify=not insecure) if connect else None
    return BenchOptions(
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
        interval=interval,
        reverse=reverse,
        wire=wire,
        wire_faults=wire_faults,
        direction=direction,
        rx_resync=rx_resync,
    )


def _run(run: Bench, as_json: bool, as_csv: bool, rate_format: str | None) -> None:
    """SIGINT and SIGTERM alike: every child process ended, the data
    directory removed (the runner's shielded tear-down), what was measured
    printed, exit 130 / 143.  Interval lines go to stdout as they happen
    (not with --json or --csv, whose rows carry them)."""
    on_interval = None if as_json or as_csv else interval_printer(rate_format)
    with StopSignals() as stop:
        try:
            with progress_bar() as on_progress:
                run.run(on_progress=on_progress, on_interval=on_interval, shield=stop.shielded)
        except Interrupted as exc:
            with stop.shielded():
                emit(run.rows(), as_json, as_csv, partial=True, rate_format=rate_format)
                click.echo(f"interrupted by {exc.name}: partial results", err=True)
            sys.exit(int(exc.status))
        except (BenchError, ConfigError) as exc:
            if as_json:
                emit_error(str(exc), getattr(exc, "option", None))
            raise CommandFailed(str(exc), ExitStatus.FAILED) from None
        emit(run.rows(), as_json, as_csv, partial=False, rate_format=rate_format)
