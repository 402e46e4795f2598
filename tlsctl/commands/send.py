"""``tlsctl send FILE``: one file to a TLS server through the kTLS layer.

The command parses its options into a :class:`SendOptions` and runs the
transfer library (:mod:`tlsctl.transfer`): the handshake, the handoff to the
record layer, sending in whole-record steps and the verdict that the peer
confirmed every byte are all there.  Here: the options, the output (a
summary table, ``key: value`` lines or one JSON object; a progress bar on a
terminal), the control socket for ``inspect-context``, SIGINT/SIGTERM
(:class:`~tlsctl.signals.StopSignals`) and the exit status.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from tlsctl.addresses import is_ip
from tlsctl.commands._options import (
    ByteSize,
    CommonOptions,
    DialectCommand,
    Fingerprint,
    common_options,
    parse_hostport,
    start_control_server,
)
from tlsctl.commands._output import (
    Output,
    emit_json,
    emit_summary,
    info,
    progress_bar,
    quiet_line,
    raw_write,
    warn,
)
from tlsctl.exitcodes import CommandFailed, ExitStatus

if TYPE_CHECKING:  # the library is loaded when the command runs, not for --help
    from collections.abc import Callable

    from tlsctl.control import Registrar
    from tlsctl.handshake import HandshakeResult
    from tlsctl.realwire import WireSpec
    from tlsctl.transfer import ClientOptions, SendHooks
    from tlsctl.transfer.filehash import FileHasher


@dataclass(frozen=True)
class SendOptions:
    """``tlsctl send``'s command line, parsed.

    ``target`` is ``-connect``'s host and port, None for ``--loopback``;
    ``file`` None (only with ``--loopback``) sends ``size`` random bytes.
    """

    file: str | None
    target: tuple[str, int] | None
    size: int
    client: ClientOptions
    output: Output
    control_socket: Path | None
    wire: WireSpec | None = None
    exec_peer: str | None = None
    showcerts: bool = False  # -showcerts
    brief: bool = False  # -brief
    hasher: FileHasher | None = None  # already hashing ``opened`` (start_early)
    opened: BinaryIO | None = None  # FILE, opened before the TLS stack was loaded


@click.command(cls=DialectCommand)
@click.argument("file", required=False, type=click.Path(allow_dash=True, dir_okay=False))
@click.option("-connect", "--connect", "connect", metavar="HOST:PORT", help="Server to send to.")
@click.option(
    "-port",
    "--port",
    "port",
    type=click.IntRange(1, 65535),
    metavar="N",
    help="The server's port, with -connect HOST (no port) or alone for localhost:N "
    "(s_client's -port).",
)
@click.option(
    "--loopback",
    is_flag=True,
    help="Start a server in this process (127.0.0.1, ephemeral certificate, "
    "verified) and send to it; it checks the SHA-256 of what arrived.",
)
@click.option(
    "--size",
    default="64M",
    show_default=True,
    type=ByteSize(minimum=0),
    help="With --loopback and no FILE: bytes of random data to send (K/M/G suffixes).",
)
@click.option(
    "-servername",
    "--servername",
    "servername",
    metavar="NAME",
    help="SNI name and the name checked in the certificate (default: HOST).",
)
@click.option(
    "-cert",
    "--cert",
    "cert",
    metavar="PEM",
    type=click.Path(dir_okay=False),
    help="Client certificate, for servers that ask for one.",
)
@click.option(
    "-key",
    "--key",
    "key",
    metavar="PEM",
    type=click.Path(dir_okay=False),
    help="Private key of -cert (default: the -cert file).",
)
@click.option(
    "-k",
    "--insecure",
    is_flag=True,
    help="Do NOT verify the server certificate (anyone can intercept).",
)
@click.option(
    "--pin-sha256",
    "pin_sha256",
    type=Fingerprint(),
    metavar="FINGERPRINT",
    help="Accept only the server certificate with this SHA-256 fingerprint "
    "(as `tlsctl serve` and `send -v` print it; colons optional) instead "
    "of the CA and host name checks.",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds to wait for connect, handshake, and each network step.",
)
@click.option(
    "--exec-peer",
    "exec_peer",
    metavar="COMMAND",
    help="With --wire netns and -connect: run COMMAND (a shell command line) in the "
    "peer namespace, e.g. the receiver (openssl s_server, tlsctl serve); the transfer "
    "starts once it listens on -connect's port.",
)
@click.option(
    "-showcerts",
    "--showcerts",
    "showcerts",
    is_flag=True,
    help="Print the server's certificate chain in PEM on stdout, as s_client does "
    "(with --json: the JSON's peer_certificates).",
)
@common_options
def send(
    file: str | None,
    connect: str | None,
    port: int | None,
    loopback: bool,
    size: int,
    servername: str | None,
    cert: str | None,
    key: str | None,
    insecure: bool,
    pin_sha256: bytes | None,
    timeout: float,
    exec_peer: str | None,
    showcerts: bool,
    common: CommonOptions,
) -> None:
    """Send FILE (- for stdin) to a TLS server through the kTLS layer.

    Verifies the server certificate against the system trust store (or
    -CAfile); prints bytes, time, throughput, SHA-256, TLS version, cipher,
    offload mode and the record sequence numbers handed to the layer.

    Exit status 0 only when the server confirmed every byte: its
    close_notify came after ours and it closed the connection cleanly.  3:
    the transfer started and was not confirmed (the server closed early,
    reset, sent an alert, or never answered our close_notify).  1: no
    transfer (connection, certificate, handshake, file).  130/143: SIGINT/
    SIGTERM; the server was sent user_canceled and no close_notify.  With
    --json the verdict is a JSON object either way ("ok", "error",
    "bytes_sent").

    \b
    Examples:
      openssl s_server -quiet -accept 4433 -cert c.pem -key k.pem > got.bin
      tlsctl send big.iso -connect localhost:4433 -CAfile ca.pem
      tlsctl send --loopback              # no set-up: 64 MiB to a built-in server
      tlsctl send --loopback --offload sim-nic --faults reorder=0.05,drop=0.05,seed=7
      tlsctl send big.iso -connect localhost:4433 -tls1_3 --key-update-every 1M
      producer | tlsctl send - -connect localhost:4433   # sent as it arrives
      tlsctl send --loopback --wire netns --offload sim-nic   # the NIC on a real wire
      tlsctl send f.bin -connect 10.213.0.2:4433 --wire netns --offload sim-nic -k \\
        --exec-peer 'openssl s_server -quiet -naccept 1 -cert c.pem -key k.pem > got'
    """
    target = _target(connect, port, loopback)
    if loopback == bool(target):
        raise click.UsageError("give exactly one of -connect HOST:PORT and --loopback")
    if insecure and common.verify_return_error:
        raise click.UsageError("-verify_return_error and -k: one checks, the other does not")
    if file is None and not loopback:
        raise click.UsageError("missing FILE (use - for stdin)")
    if pin_sha256 is not None and (insecure or loopback):
        raise click.UsageError(
            f"--pin-sha256 goes with -connect and verification "
            f"(not with {'-k' if insecure else '--loopback'})"
        )
    if exec_peer and (common.wire is None or target is None):
        raise click.UsageError("--exec-peer goes with --wire netns and -connect")
    if common.wire is not None and target is not None:
        from offload.netwire.netns import ADDRS

        if target[0] != ADDRS["rx"]:
            raise click.BadParameter(
                f"with --wire netns the receiver is in the peer namespace, at "
                f"{ADDRS['rx']} (-connect {ADDRS['rx']}:{target[1]})",
                param_hint="-connect",
            )
    # The file's SHA-256 starts now, on the other core, while the TLS stack
    # loads and the handshake runs (tlsctl.transfer.filehash).
    early = _start_hash(file) if target is not None and common.wire is None else None
    try:
        from tlsctl.transfer import ClientOptions

        client = ClientOptions(
            servername=servername,
            cert=cert,
            key=key,
            insecure=insecure,
            pin_sha256=pin_sha256,
            timeout=timeout,
            tls=common.tls,
            offload=common.offload,
            device=common.device,
            keylogfile=common.keylogfile,
            key_update_every=common.key_update_every,
        )
        _send(
            SendOptions(
                file=file,
                target=target,
                size=size,
                client=client,
                output=common.output,
                control_socket=common.control_socket,
                wire=common.wire,
                exec_peer=exec_peer,
                showcerts=showcerts,
                brief=common.trace.brief,
                opened=early[0] if early is not None else None,
                hasher=early[1] if early is not None else None,
            )
        )
    finally:
        if early is not None:
            early[1].stop()
            early[0].close()


def _start_hash(file: str | None) -> tuple[BinaryIO, FileHasher] | None:
    """A regular FILE opened and being hashed (None for stdin and the rest)."""
    if file is None or file == "-":
        return None
    from tlsctl.transfer.filehash import start_early  # the standard library only

    return start_early(file)


def _target(connect: str | None, port: int | None, loopback: bool) -> tuple[str, int] | None:
    """-connect HOST:PORT, or -port N with -connect HOST or alone (localhost,
    as s_client's default host)."""
    if port is None:
        return parse_hostport(connect) if connect else None
    if loopback:
        raise click.UsageError("-port goes with -connect, not --loopback")
    if connect is None:
        return "localhost", port
    bare = connect.strip("[]")
    if is_ip(bare) or ":" not in connect:
        return bare, port
    raise click.UsageError(f"-connect {connect} has a port already: drop -port {port}")


def _send(opts: SendOptions) -> None:
    from tlsctl.handshake import HandshakeError
    from tlsctl.realwire import WireUnavailable
    from tlsctl.session.channel import ChannelError
    from tlsctl.signals import Interrupted, StopSignals
    from tlsctl.tlsconf import ConfigError
    from tlsctl.transfer import TransferFailed, send_to

    out = opts.output
    with StopSignals() as stop:
        # For inspect-context: every kTLS connection of this process registers with it.
        control = start_control_server(opts.control_socket)
        try:
            seen: dict[str, Any] = {}
            hooks = _hooks(opts, control, seen)
            if opts.wire is not None:
                from tlsctl.transfer.netwire import send_on_wire

                result, where = send_on_wire(
                    opts.file,
                    opts.size,
                    opts.target,
                    opts.client,
                    stop,
                    opts.wire,
                    hooks,
                    exec_peer=opts.exec_peer,
                )
                _report({**result, **seen}, where, out)
                if not result.get("match", True):
                    raise CommandFailed(result["error"], ExitStatus.INCOMPLETE)
            elif opts.target is None:
                from tlsctl.transfer import send_loopback  # with a server in it

                result, target = send_loopback(opts.file, opts.size, opts.client, stop, hooks)
                _report(result, target, out)
                if not result["match"]:
                    raise CommandFailed(result["error"], ExitStatus.INCOMPLETE)
            else:
                host, port = opts.target
                result = send_to(
                    opts.opened or opts.file or "-",
                    host,
                    port,
                    opts.client,
                    stop,
                    hooks,
                    hasher=opts.hasher,
                )
                _report({**result, **seen}, f"{host}:{port}", out)
        except TransferFailed as exc:
            _fail(str(exc), exc.status, exc.facts, out)
        except Interrupted as exc:  # before the transfer started (or a second signal)
            _fail(f"interrupted by {exc.name}", exc.status, {}, out)
        except (ConfigError, HandshakeError, ChannelError, WireUnavailable) as exc:
            _fail(str(exc), ExitStatus.FAILED, {}, out)
        finally:
            with stop.critical(check=False):
                control.stop()


def _hooks(opts: SendOptions, registrar: Registrar, seen: dict[str, Any]) -> SendHooks:
    """Status lines unless -quiet/--json/-brief; details with -v (even with
    --json: they go to stderr); a progress bar when status lines are shown;
    -brief and -showcerts once connected (``seen``: what --json adds)."""
    from tlsctl.transfer import SendHooks

    out = opts.output
    return SendHooks(
        status=info if out.status and not opts.brief else quiet_line,
        detail=info if out.verbose else quiet_line,
        warn=warn,
        progress=progress_bar if out.status else None,
        registrar=registrar,
        connected=_connected(opts, seen) if opts.showcerts or opts.brief else None,
    )


def _connected(opts: SendOptions, seen: dict[str, Any]) -> Callable[[HandshakeResult, str], None]:
    """-brief's block on stderr and -showcerts' chain on stdout (s_client's
    streams), or the chain into --json's object."""

    def connected(res: HandshakeResult, offload: str) -> None:
        from tlsctl import peerinfo

        if opts.brief:
            c = opts.client
            verification = (
                "NOT verified (-k)"
                if c.insecure
                else "OK (pinned, --pin-sha256)"
                if c.pin_sha256 is not None
                else "OK"
            )
            warn(peerinfo.brief_lines(res, verification, offload).rstrip("\n"))
        if opts.showcerts:
            if opts.output.as_json:
                seen["peer_certificates"] = peerinfo.chain_pems(res)
            else:
                raw_write(err=False)(peerinfo.showcerts_text(res))

    return connected


def _fail(message: str, status: ExitStatus, facts: dict[str, Any], out: Output) -> None:
    """The verdict of a failed run: a JSON object with --json, one line on stderr."""
    if out.as_json:
        emit_json(
            {"ok": False, "error": message, "bytes_sent": facts.pop("bytes_sent", 0), **facts}
        )
    raise CommandFailed(message, status)


def _report(result: dict[str, Any], target: str, out: Output) -> None:
    if out.as_json:
        emit_json(result)
    elif not out.quiet:
        emit_summary(f"tlsctl send → {target}", for_people(result))


def for_people(result: dict[str, Any]) -> dict[str, Any]:
    """The summary as a person reads it: one throughput line in bytes and
    bits per second, the offload with what ``auto`` picked; ``--json``
    keeps the numbers (``bytes_per_second``, ``bits_per_second``) and the
    two offload fields apart."""
    from tlsctl.units import human_bits, human_rate

    shown: dict[str, Any] = {}
    for key, value in result.items():
        if key == "bytes_per_second":
            shown["throughput"] = (
                "n/a"
                if value is None
                else f"{human_rate(int(value), 1.0)} ({human_bits(result['bits_per_second'])})"
            )
        elif key == "bits_per_second":
            continue
        elif key == "offload_requested":
            if value != result.get("offload"):
                shown["offload"] = f"{value} ({result.get('offload')})"
        else:
            shown[key] = value
    return shown
