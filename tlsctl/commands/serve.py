"""``tlsctl serve``: a TLS server whose connections run on the kTLS layer.

The command parses its options into a :class:`~tlsctl.server.ServeOptions`
and runs the server library (:mod:`tlsctl.server`): the accept loop, the
connection threads, the handlers (sink, ``-o``, ``--save-dir``, ``--echo``,
``-WWW``), ``--workers`` and the signals are all there.  Here: the options,
the control socket for ``inspect-context``, and the output: the listening
line, one log line (or one JSON object with ``--json``) per connection, one
summary line per server, and the exit status.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from tlsctl.addresses import format_addr
from tlsctl.commands import _complete as complete
from tlsctl.commands._options import (
    ByteSize,
    CommonOptions,
    DialectCommand,
    common_options,
    parse_hostport,
    start_control_server,
)
from tlsctl.commands._output import Output, emit_json, human_rate, info, warn
from tlsctl.exitcodes import CommandFailed, ExitStatus
from tlsctl.server import HANDSHAKE_TIMEOUT

if TYPE_CHECKING:  # the library is loaded when the command runs, not for --help
    from tlsctl.handshake import HandshakeResult
    from tlsctl.realwire import WireSpec
    from tlsctl.server import HandlerMode, Listening, ServeHooks, ServeOptions, Server


class FileMode(click.ParamType[int]):
    """An octal permission mode (``600``, ``0640``, ``0o644``)."""

    name = "MODE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            mode = int(str(value).lower().removeprefix("0o"), 8)
        except ValueError:
            self.fail(f"{value!r} is not an octal mode (e.g. 600, 640)", param, ctx)
        if not 0 <= mode <= 0o777:
            self.fail(f"{value!r}: permission bits only (at most 777)", param, ctx)
        return mode


@click.command(cls=DialectCommand)
@click.option(
    "-accept",
    "--accept",
    "accept",
    metavar="[HOST:]PORT",
    help="Address to listen on (default: 4433 on every address; port 0: any free port).",
)
@click.option(
    "-port",
    "--port",
    "port",
    type=click.IntRange(0, 65535),
    metavar="N",
    help="Port to listen on, on every address (s_server's -port; -accept HOST:PORT "
    "for one address).",
)
@click.option(
    "-cert",
    "--cert",
    "cert",
    metavar="PEM",
    type=click.Path(dir_okay=False),
    help="Certificate chain (default: an ephemeral self-signed one).",
)
@click.option(
    "-key",
    "--key",
    "key",
    metavar="PEM",
    type=click.Path(dir_okay=False),
    help="Private key (default: the -cert file).",
)
@click.option("--sink", "sink_", is_flag=True, help="Count and discard (the default).")
@click.option(
    "-o",
    "--output",
    "output",
    metavar="FILE",
    shell_complete=complete.files,
    help="Store one connection's stream in FILE, then exit (implies -naccept 1). "
    "FILE must not exist: it is never overwritten.",
)
@click.option(
    "--save-dir",
    metavar="DIR",
    shell_complete=complete.dirs,
    help="Store each connection in its own new file "
    "DIR/conn-<start time>-<tag>-w<worker>-<n>.bin (named in its log line).",
)
@click.option(
    "--file-mode",
    type=FileMode(),
    default="600",
    show_default=True,
    help="Permissions of stored files (exactly: the umask is not applied).",
)
@click.option(
    "--partial",
    type=click.Choice(["keep", "delete"]),
    default="keep",
    show_default=True,
    help="A stream that does not end with the client's close_notify (truncated, "
    "failed, cut by our stop) stays in NAME.partial (keep) or is removed.",
)
@click.option("--echo", "echo_", is_flag=True, help="Send everything back.")
@click.option(
    "-www",
    "--www",
    "status_page",
    is_flag=True,
    help="Answer every HTTP GET with a status page about its connection (s_server's "
    "-www): protocol, cipher, ALPN, offload, TX/RX sequence numbers, counters.",
)
@click.option(
    "-WWW",
    "--WWW",
    "www",
    metavar="DIR",
    shell_complete=complete.dirs,
    help="Serve the regular files in DIR over HTTP/1.x (GET, HEAD, keep-alive; "
    "symlinks and special files are refused).",
)
@click.option(
    "-naccept",
    "--naccept",
    type=click.IntRange(min=1),
    metavar="N",
    help="Exit after N connections have been handled.",
)
@click.option(
    "-verify",
    "--verify",
    "verify_depth",
    type=click.IntRange(min=0),
    default=0,
    metavar="DEPTH",
    help="Ask for a client certificate (verified against -CAfile).",
)
@click.option(
    "-Verify",
    "--Verify",
    "require_depth",
    type=click.IntRange(min=0),
    default=0,
    metavar="DEPTH",
    help="Require a client certificate.",
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds a connection may be idle after the handshake.",
)
@click.option(
    "--handshake-timeout",
    default=HANDSHAKE_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds a client has to complete the TLS handshake.",
)
@click.option(
    "--max-conns",
    type=click.IntRange(min=1),
    metavar="N",
    help="Connections handled at once per process; more wait in the listen "
    "backlog (default: from RLIMIT_NOFILE, 2 descriptors per connection).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes accepting on the one listening socket; -naccept counts per worker.",
)
@click.option(
    "-w",
    "--window",
    type=ByteSize(4096, 1 << 30),
    metavar="BYTES",
    help="Socket buffer size of every connection (SO_RCVBUF and SO_SNDBUF, as "
    "iperf3's -w; K/M suffixes): bounds how far a client can send ahead of what "
    "the server has read. Default: the kernel's autotuning.",
)
@click.option(
    "--exec-peer",
    "exec_peer",
    metavar="COMMAND",
    help="With --wire netns: once listening, run COMMAND (a shell command line) in the "
    "peer namespace, with TLSCTL_CONNECT=HOST:PORT (and TLSCTL_HOST, TLSCTL_PORT) in its "
    "environment and stdin at EOF; when it exits the server stops accepting and ends "
    "once its connections have. Its non-zero exit status makes ours 3.",
)
@common_options
def serve(
    accept: str | None,
    port: int | None,
    cert: str | None,
    key: str | None,
    sink_: bool,
    output: str | None,
    save_dir: str | None,
    file_mode: int,
    partial: str,
    echo_: bool,
    status_page: bool,
    www: str | None,
    naccept: int | None,
    verify_depth: int,
    require_depth: int,
    timeout: float,
    handshake_timeout: float,
    max_conns: int | None,
    workers: int,
    window: int | None,
    exec_peer: str | None,
    common: CommonOptions,
) -> None:
    """Accept TLS connections; move their data through the kTLS layer.

    \b
    Examples:
      tlsctl serve -accept 4433 --sink          # ephemeral cert, count bytes
      tlsctl serve -accept 4433 -cert c.pem -key k.pem --save-dir ./in
      tlsctl serve -accept 8443 -WWW ./public   # curl -k https://localhost:8443/f
      tlsctl serve --echo -tls1_3 &  kill -USR1 $!   # KeyUpdate on every live connection
      tlsctl serve --wire netns --offload sim-nic -WWW ./public  # behind the NIC on a real wire
      tlsctl serve --wire netns --offload sim-nic -o got.bin \\
        --exec-peer 'openssl s_client -quiet -no_ign_eof -nocommands -connect $TLSCTL_CONNECT < f'

    SIGUSR1: every live TLS 1.3 connection sends a KeyUpdate (update_not_requested)
    and switches to its next TX key before the next record it sends.
    SIGINT/SIGTERM: stop accepting, give running connections 3 s, then cut them
    (logged as interrupted by server shutdown).

    \b
    Exit status: 0 every connection handled ended with the client's close_notify
    (also after SIGINT/SIGTERM with nothing in flight); 3 at least one did not
    (failed handshake, alert, truncated, cut by our stop); 1 serve itself failed
    (cannot listen, bad certificate, a worker died); 2 bad options.
    """
    from tlsctl.handshake import HandshakeError
    from tlsctl.realwire import WireUnavailable
    from tlsctl.server import ServeHooks, ServeOptions, prepare, run
    from tlsctl.tlsconf import ConfigError

    if exec_peer and common.wire is None:
        raise click.UsageError("--exec-peer goes with --wire netns")
    control = start_control_server(common.control_socket)  # for inspect-context
    if output and (naccept or 1) > 1:
        raise click.UsageError("-o FILE stores one connection; use --save-dir DIR for more")
    if output and workers > 1:
        raise click.UsageError("-o FILE stores one connection; it takes no --workers")
    mode, path = _handler_choice(sink_, output, save_dir, echo_, www, status_page)
    if accept is not None and port is not None:
        raise click.UsageError("give -accept [HOST:]PORT or -port N, not both")
    host, port = ("::", port) if port is not None else parse_hostport(accept or "4433", "::")
    opts = ServeOptions(
        host=host,
        port=port,
        cert=cert,
        key=key,
        mode=mode,
        path=path,
        file_mode=file_mode,
        keep_partial=partial == "keep",
        naccept=1 if output else naccept,
        verify_depth=verify_depth,
        require_depth=require_depth,
        timeout=timeout,
        handshake_timeout=handshake_timeout,
        max_conns=max_conns,
        workers=workers,
        window=window,
        key_update_every=common.key_update_every,
        tls=common.tls,
        offload=common.offload,
        device=common.device,
        keylogfile=common.keylogfile,
    )
    out = common.output
    hooks = ServeHooks(
        on_record=lambda rec, head: _log(rec, head, out),
        warn=warn,
        done=lambda server: _done(server, out),
        registrar=control,
        worker_exit=control.stop,
        connected=_brief if common.trace.brief else None,
    )
    try:
        if common.wire is not None:
            if workers > 1:
                raise click.UsageError("--wire netns serves from one process (no --workers)")
            status = _serve_on_wire(opts, common.wire, hooks, out, exec_peer)
        else:
            listening = prepare(opts)
            _announce(listening, out)
            status = run(listening, hooks)
    except (ConfigError, HandshakeError, WireUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    if status is ExitStatus.INCOMPLETE:
        raise CommandFailed("not every connection ended cleanly (see the log)", status)
    if status is not ExitStatus.OK:
        raise CommandFailed("a worker failed (see the log)", status)


def _serve_on_wire(
    opts: ServeOptions,
    spec: WireSpec,
    hooks: ServeHooks,
    out: Output,
    exec_peer: str | None = None,
) -> ExitStatus:
    """``--wire netns``: listen in the host namespace behind the NIC, tell
    where clients go, serve, then the wire's summary (and the capture).

    ``exec_peer``: the client, run in the peer namespace once the server
    listens; its exit stops the accepting (what it connected is served to
    the end), and a status other than 0 is the run's failure: with a
    client peer, the server may have seen nothing go wrong (a client that
    never connected, or refused our certificate)."""
    import dataclasses

    from tlsctl.server import run
    from tlsctl.server.netwire import serve_wire

    with serve_wire(opts, spec) as wired:
        _announce(wired.listening, out, wired.facts())
        peer = None
        if exec_peer:
            peer = wired.start_peer(exec_peer)
            hooks = dataclasses.replace(hooks, started=peer.stops)
        try:
            status = run(wired.listening, hooks)
        finally:
            peer_status = peer.finish() if peer is not None else None
        summary = wired.finish()
        if peer is not None:
            summary["peer_status"] = peer_status
        _wire_done(summary, out)
    if peer_status:
        said = f"--exec-peer {peer} exited with status {peer_status}"
        if status is ExitStatus.OK:
            raise CommandFailed(said, ExitStatus.INCOMPLETE)
        warn(said)
    return status


def _wire_done(summary: dict[str, Any], out: Output) -> None:
    """The real wire's summary: a JSON object with --json, else one line
    (CPU apart, then the NIC's and its driver's counters)."""
    if out.as_json:
        emit_json(summary)
        return
    counters = {**summary.get("nic_counters", {}), **summary.get("device_counters", {})}
    line = (
        f"wire: host CPU {summary['host_cpu_seconds']:.3f} s, NIC CPU "
        f"{summary['nic_cpu_seconds']:.3f} s ({summary.get('nic_driver')}); "
        + ", ".join(f"{k} {v}" for k, v in counters.items())
    )
    if summary.get("faults_injected"):
        line += "; faults " + ", ".join(f"{k} {v}" for k, v in summary["faults_injected"].items())
    info(line, quiet=out.quiet)
    if summary.get("pcap"):
        info(
            f"capture: {summary['pcap']} ({summary['pcap_bytes']} bytes, secrets embedded)",
            quiet=out.quiet,
        )
        if summary.get("pcap_dropped"):
            warn(
                f"warning: --pcap: the capture missed {summary['pcap_dropped']} packets "
                "(dumpcap could not keep up): it does not hold the whole stream"
            )


def _brief(res: HandshakeResult, offload: str, head: str) -> None:
    """-brief: s_server's short block per connection on stderr, each line
    with the connection's label (connections run at once)."""
    from tlsctl.peerinfo import brief_lines

    peer = res.conn.get_peer_certificate()
    verification = "OK" if peer is not None else "no client certificate"
    block = brief_lines(res, verification, offload).rstrip("\n").splitlines()
    warn("\n".join(f"{head} {line}" for line in block))


def _handler_choice(
    sink_: bool,
    output: str | None,
    save_dir: str | None,
    echo_: bool,
    www: str | None,
    status_page: bool = False,
) -> tuple[HandlerMode, str | None]:
    """At most one of --sink, -o, --save-dir, --echo, -WWW, -www (default: --sink)."""
    chosen = [
        n
        for n, on in (
            ("--sink", sink_),
            ("-o", output),
            ("--save-dir", save_dir),
            ("--echo", echo_),
            ("-WWW", www),
            ("-www", status_page),
        )
        if on
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one of {', '.join(chosen)}")
    if output:
        return "output", output
    if save_dir:
        return "save-dir", save_dir
    if echo_:
        return "echo", None
    if www:
        return "www", www
    if status_page:
        return "status", None
    return "sink", None


def _announce(listening: Listening, out: Output, wire: dict[str, Any] | None = None) -> None:
    """The listening line (a JSON object with --json), where files go, and
    the certificate's SHA-256 fingerprint (to pin it with ``send --pin-sha256``);
    on a real wire (``wire``: its facts) where the clients go."""
    opts = listening.opts
    host, port = listening.bound
    workers = opts.workers
    if out.as_json:
        emit_json(
            (wire or {})
            | {
                "event": "listening",
                "host": host,
                "port": port,
                "mode": opts.mode,
                "offload": opts.offload,
                "fingerprint": listening.fingerprint,
                "workers": workers,
                "pid": os.getpid(),
                "max_conns": listening.max_conns,
                "handshake_timeout": opts.handshake_timeout,
                "files": listening.files,
                "run": listening.run,
            }
        )
        return
    if wire is not None:
        info(
            f"real wire: this server is in namespace {wire['host_netns']} "
            f"({wire['host_addr']}) behind the NIC (pid {wire['nic_pid']}); clients go in "
            f"namespace {wire['peer_netns']}: ip netns exec {wire['peer_netns']} COMMAND, "
            f"to {wire['host_addr']}:{port}",
            quiet=out.quiet,
        )
    info(
        f"ACCEPT {format_addr(host, port)} ({opts.mode}, offload {opts.offload}, "
        f"{f'{workers} workers, ' if workers > 1 else ''}"
        f"up to {listening.max_conns} connections at once{' each' if workers > 1 else ''})",
        quiet=out.quiet,
    )
    if listening.files:
        info(
            f"storing in {listening.files} (NAME.partial until the client's close_notify)",
            quiet=out.quiet,
        )
    if listening.fingerprint:
        what = "ephemeral self-signed certificate" if listening.ephemeral else "certificate"
        info(
            f"{what}, SHA-256 fingerprint {listening.fingerprint} (for send --pin-sha256)",
            quiet=out.quiet,
        )


def _done(server: Server, out: Output) -> None:
    """One summary line on stderr per server (shown even with -quiet/--json
    when a connection failed)."""
    cut = f" ({server.interrupted} cut by shutdown)" if server.interrupted else ""
    who = "" if server.worker is None else f"worker {server.worker} "
    line = f"{who}done: {server.accepted} connection(s), {server.failed} failed{cut}"
    if server.failed:
        warn(line)
    else:
        info(line, quiet=out.quiet or out.as_json)


def _amounts(rec: dict[str, Any]) -> str:
    """``N bytes in S s (rate)``; a connection that also sent (``--echo``,
    ``-WWW``) says received and sent apart, each with its own rate."""
    seconds = rec["seconds"]
    got, sent = int(rec.get("bytes_in", 0)), int(rec.get("bytes_out", 0))
    if "bytes_out" not in rec:
        return f"{got} bytes in {seconds:.3f} s ({human_rate(got, seconds)})"
    return (
        f"received {got} bytes ({human_rate(got, seconds)}), "
        f"sent {sent} bytes ({human_rate(sent, seconds)}) in {seconds:.3f} s"
    )


def _log(rec: dict[str, Any], head: str, out: Output) -> None:
    """One connection: a JSON object with --json, else one line (failures
    even with -quiet)."""
    if out.as_json:
        emit_json(rec)
        return
    if not rec.get("ok"):
        kept = ""
        if rec.get("file"):
            kept = f"; {rec.get('bytes_in', 0)} bytes kept in {rec['file']}"
        elif rec.get("file_removed"):
            kept = f"; removed {rec['file_removed']}"
        warn(f"{head}: error: {rec.get('error')}{kept}")
        return
    alpn = f" ALPN {rec['alpn']}" if "alpn" in rec else ""
    parts = [
        f"{head} {rec.get('version')} {rec.get('cipher')}{alpn} offload {rec.get('offload')}:",
        _amounts(rec),
    ]
    if "sha256" in rec:
        parts.append(f"sha256 {rec['sha256']}")
    if "file" in rec:
        parts.append(f"-> {rec['file']}")
    if "http" in rec:
        parts.append(rec["http"])
    rx = rec.get("rx_offload")
    if rx:
        parts.append(
            f"NIC RX ({rx['rx_resync']}): records decrypted {rx['rx_records_device']}, "
            f"repaired {rx['rx_records_partial']}, software {rx['rx_records_sw']}"
        )
    if out.verbose and "tx_seq_at_handoff" in rec:
        parts.append(
            f"seq at handoff tx={rec['tx_seq_at_handoff']} "
            f"rx={rec['rx_seq_at_handoff']}, at end tx={rec.get('tx_seq_at_end')} "
            f"rx={rec.get('rx_seq_at_end')}, key updates received "
            f"{rec.get('key_updates', 0)} sent {rec.get('key_updates_sent', 0)}"
        )
    info(" ".join(parts), quiet=out.quiet)
