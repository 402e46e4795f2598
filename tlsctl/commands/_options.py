"""Options shared by ``send`` and ``serve``, in OpenSSL's and GNU's spelling.

People arrive from ``openssl s_client``/``s_server`` with ``-connect``,
``-CAfile`` and ``-tls1_3`` in their fingers, so every option OpenSSL has is
accepted with one dash as well as two (click treats a multi-letter
single-dash name as a long option).

:func:`common_options` adds the options both commands take and hands them
to the command parsed, as one frozen :class:`CommonOptions`; usage errors
(a fault spec without a NIC, ...) are found there, before anything runs.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from offload.uapi import TLS_MAX_PAYLOAD_SIZE, TLS_MIN_RECORD_SIZE_LIM
from tlsctl import addresses
from tlsctl.commands import _complete as complete
from tlsctl.commands._output import Output
from tlsctl.exitcodes import CommandFailed, ExitStatus
from tlsctl.offloadmode import (
    RX_RESYNC,
    WIRES,
    DeviceSpec,
    Offload,
    OffloadOptionError,
    Wire,
    device_spec,
    needs_layer,
    offload_choices,
    unavailable_reason,
)
from tlsctl.units import parse_size

if TYPE_CHECKING:  # loaded when a command runs, not for --help
    from tlsctl.control import ControlServer
    from tlsctl.realwire import WireSpec
    from tlsctl.tlsconf import TlsOptions
    from tlsctl.tracing import Tracer

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CommonOptions:
    """What ``send`` and ``serve`` share, parsed."""

    tls: TlsOptions
    offload: Offload
    device: DeviceSpec | None  # --faults/--mss for a NIC offload
    keylogfile: str | None
    key_update_every: int | None
    output: Output
    control_socket: Path | None
    trace: Trace
    verify_return_error: bool  # the default (see the option): only checked against -k
    wire: WireSpec | None = None  # --wire netns (None: the in-process wire model)


@dataclass(frozen=True)
class Trace:
    """``-msg``, ``-state``, ``-debug`` and ``-brief``, parsed (with what ``-vv``
    and ``-vvv`` add: :func:`_trace_from`)."""

    msg: bool = False  # -msg: record and handshake message headers (stdout, as s_client)
    state: bool = False  # -state: handshake state lines (stderr, as s_client)
    debug: bool = False  # -debug: -msg plus a hex dump of every record
    brief: bool = False  # -brief: s_client's short connection summary

    @property
    def records(self) -> bool:
        """Are records traced (-msg or -debug)?"""
        return self.msg or self.debug


class DialectCommand(click.Command):
    """A command that names a single-dash spelling it does not know whole.

    click reads ``-port`` as ``-p`` followed by ``ort`` and says "No such
    option: -p"; someone typing OpenSSL's dialect wants to hear which of
    *their* words is not known: "no such option '-port'".  Combined short
    flags (``-vv``, ``-kv``) and a short option with its value attached
    (``-ofile``) stay click's.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            _check_single_dash(self.get_params(ctx), args)
        except click.UsageError as exc:
            exc.ctx = ctx
            raise
        return super().parse_args(ctx, args)


def _check_single_dash(params: Sequence[click.Parameter], args: Sequence[str]) -> None:
    """UsageError for the first single-dash word in option position that is
    none of ``params``' names: the value after an option that takes one is
    skipped, and everything after ``--``."""
    takes_value: dict[str, bool] = {}
    for p in params:
        if isinstance(p, click.Option):
            for name in (*p.opts, *p.secondary_opts):
                takes_value[name] = not (p.is_flag or p.count)
    short_flags = {n[1] for n, v in takes_value.items() if len(n) == 2 and n[0] == "-" and not v}
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--":
            return
        if not arg.startswith("-") or arg.startswith("--") or len(arg) <= 2:
            skip = takes_value.get(arg, False)
            continue
        name = arg.split("=", 1)[0]
        if name in takes_value:
            skip = takes_value[name] and "=" not in arg
            continue
        if set(arg[1:]) <= short_flags or takes_value.get(arg[:2], False):
            continue  # -vv, -kv; -oFILE
        near = difflib.get_close_matches(name, [n for n in takes_value if len(n) > 2], n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise click.UsageError(f"no such option '{arg}'{hint}")


def common_options(f: F) -> F:
    """``--key-update-every``, the TLS, offload and output options and
    ``--control-socket``; the command receives them as ``common``."""

    @functools.wraps(f)
    def command(*args: Any, **params: Any) -> Any:
        return f(*args, common=_common_from(params), **params)

    wrapped: Any = command
    for deco in (_control_socket_option, _tls_options, _key_update_option):
        wrapped = deco(wrapped)
    return wrapped  # type: ignore[no-any-return]


def _common_from(params: dict[str, Any]) -> CommonOptions:
    """Take the common options out of click's ``params`` (what is left is the
    command's own)."""
    offload: Offload = params.pop("offload")
    unavailable = unavailable_reason(offload)
    if unavailable:  # the host lacks it: not a usage error, a local failure (status 1)
        raise CommandFailed(unavailable, ExitStatus.FAILED)
    key_update_every: int | None = params.pop("key_update_every")
    wire: Wire = params.pop("wire")
    faults = params.pop("faults")
    try:
        device = device_spec(
            offload,
            faults=faults,
            mss=params.pop("mss"),
            key_update_every=key_update_every,
            wire=wire,
            rx_resync=params.pop("rx_resync"),
        )
        real_wire = _wire_from(wire, faults, params.pop("pcap"))
    except OffloadOptionError as exc:
        if exc.option is not None:
            raise click.BadParameter(str(exc), param_hint=exc.option) from None
        raise click.UsageError(str(exc)) from None
    trace = _trace_from(params, int(params["verbose"]))
    tls = tls_options_for(
        offload,
        tls1_2=params.pop("tls1_2"),
        tls1_3=params.pop("tls1_3"),
        cipher=params.pop("cipher"),
        ciphersuites=params.pop("ciphersuites"),
        cafile=params.pop("cafile"),
        capath=params.pop("capath"),
        alpn=_alpn_list(params.pop("alpn")),
        tracer=_tracer(trace, params["as_json"]),
        max_send_frag=_max_send_frag(params.pop("max_send_frag"), offload),
    )
    output = Output(
        quiet=params.pop("quiet"), verbose=params.pop("verbose"), as_json=params.pop("as_json")
    )
    return CommonOptions(
        tls=tls,
        offload=offload,
        device=device,
        keylogfile=params.pop("keylogfile") or None,
        key_update_every=key_update_every,
        output=output,
        control_socket=params.pop("control_socket"),
        wire=real_wire,
        trace=trace,
        verify_return_error=params.pop("verify_return_error"),
    )


def _wire_from(wire: Wire, faults: str | None, pcap: str | None) -> WireSpec | None:
    """``--wire``/``--pcap``, checked before anything runs: the real wire
    without root or /dev/net/tun, and a ``--pcap`` file that exists or
    tools that are missing, are one line and status 1 here."""
    from tlsctl.realwire import unavailable_reason as wire_unavailable
    from tlsctl.realwire import wire_spec

    spec = wire_spec(wire, faults=faults, pcap=pcap)
    if spec is None:
        return None
    reason = wire_unavailable()
    if reason:
        raise CommandFailed(reason, ExitStatus.FAILED)
    if spec.pcap:
        import os

        from tlsctl.pcapture import check_target, tools_missing
        from tlsctl.tlsconf import ConfigError

        missing = tools_missing()
        if missing:
            raise CommandFailed(missing, ExitStatus.FAILED)
        try:
            os.close(check_target(spec.pcap)[0])
        except ConfigError as exc:
            raise CommandFailed(str(exc), ExitStatus.FAILED) from None
    return spec


def _trace_from(params: dict[str, Any], verbose: int) -> Trace:
    """-msg/-state/-debug/-brief; ``-vv`` adds -state, ``-vvv`` -msg."""
    return Trace(
        msg=params.pop("msg") or verbose >= 3,
        state=params.pop("state") or verbose >= 2,
        debug=params.pop("debug"),
        brief=params.pop("brief"),
    )


def _tracer(trace: Trace, as_json: bool) -> Tracer | None:
    """The tracer for -msg/-debug/-state, or None.  -msg lines go to stdout
    as s_client's do (stderr with --json: stdout is the JSON's), -state lines
    to stderr (s_client's bio_err)."""
    if not (trace.records or trace.state):
        return None
    from tlsctl.commands._output import raw_write
    from tlsctl.tracing import Tracer

    msg = raw_write(err=as_json) if trace.records else None
    return Tracer(msg, raw_write(err=True) if trace.state else None, hex=trace.debug)


def _alpn_list(value: str | None) -> tuple[str, ...]:
    """``-alpn h2,http/1.1``: protocol names, in preference order (RFC 7301:
    each 1 to 255 bytes)."""
    if value is None:
        return ()
    names = tuple(n.strip() for n in value.split(","))
    for n in names:
        if not 1 <= len(n.encode()) <= 255:
            raise click.BadParameter(
                f"{value!r}: each protocol name is 1 to 255 bytes (comma-separated)",
                param_hint="-alpn",
            )
    return names


def tls_options_for(
    offload: Offload,
    *,
    tls1_2: bool = False,
    tls1_3: bool = False,
    cipher: str | None = None,
    ciphersuites: str | None = None,
    cafile: str | None = None,
    capath: str | None = None,
    alpn: tuple[str, ...] = (),
    tracer: Tracer | None = None,
    max_send_frag: int | None = None,
) -> TlsOptions:
    """The TLS options; with an offload that must take the connection (all but
    ``auto`` and ``none``, which may keep it in pyOpenSSL) the suites are
    limited to what that record layer carries."""
    from tlsctl.tlsconf import TlsOptions

    return TlsOptions(
        tls1_2=tls1_2,
        tls1_3=tls1_3,
        cipher=cipher,
        ciphersuites=ciphersuites,
        cafile=cafile,
        capath=capath,
        alpn=alpn,
        trace=tracer,
        layer=offload if needs_layer(offload) else None,
        max_send_frag=max_send_frag,
    )


def _max_send_frag(value: int | None, offload: str) -> int | None:
    """-max_send_frag is the layer's TLS_TX_MAX_PAYLOAD_LEN: pyOpenSSL
    cannot set OpenSSL's own limit, so ``--offload none`` cannot have it."""
    if value is not None and offload == "none":
        raise click.BadParameter(
            "needs a kTLS record layer; --offload none keeps the connection in pyOpenSSL",
            param_hint="-max_send_frag",
        )
    return value


def _tls_options(f: F) -> F:
    """Version, cipher, CA, keylog, offload and output options."""
    decorators = [
        click.option(
            "-tls1_2", "--tls1_2", "--tls1.2", "tls1_2", is_flag=True, help="Only TLS 1.2."
        ),
        click.option(
            "-tls1_3", "--tls1_3", "--tls1.3", "tls1_3", is_flag=True, help="Only TLS 1.3."
        ),
        click.option(
            "-cipher",
            "--cipher",
            "cipher",
            metavar="LIST",
            help="TLS 1.2 cipher list (OpenSSL syntax); with --offload "
            "sw/kernel/NIC only the suites the layer carries are used.",
        ),
        click.option(
            "-ciphersuites",
            "--ciphersuites",
            "ciphersuites",
            metavar="LIST",
            help="TLS 1.3 cipher suites (colon-separated).",
        ),
        click.option(
            "-CAfile",
            "--CAfile",
            "--cafile",
            "cafile",
            metavar="PEM",
            type=click.Path(dir_okay=False),
            help="Trusted CA certificates (instead of the system store).",
        ),
        click.option(
            "-CApath",
            "--CApath",
            "--capath",
            "capath",
            metavar="DIR",
            type=click.Path(file_okay=False),
            shell_complete=complete.dirs,
            help="Trusted CA certificates in a hashed directory (`openssl rehash DIR`); "
            "with -CAfile, both are trusted.",
        ),
        click.option(
            "-verify_return_error",
            "--verify_return_error",
            "verify_return_error",
            is_flag=True,
            help="Abort the handshake when verification fails. Always so in tlsctl "
            "(s_client goes on by default); accepted for OpenSSL command lines.",
        ),
        click.option(
            "-alpn",
            "--alpn",
            "alpn",
            metavar="LIST",
            help="ALPN protocols, comma-separated in preference order (e.g. h2,http/1.1); "
            "the negotiated one is in the summary, the log and --json.",
        ),
        click.option(
            "-max_send_frag",
            "--max_send_frag",
            "max_send_frag",
            type=click.IntRange(TLS_MIN_RECORD_SIZE_LIM, TLS_MAX_PAYLOAD_SIZE),
            metavar="BYTES",
            help="Largest plaintext per record sent after the handoff (setsockopt "
            "TLS_TX_MAX_PAYLOAD_LEN; the kernel needs Linux 6.19+). Needs a kTLS "
            "record layer (not --offload none).",
        ),
        click.option(
            "-msg",
            "--msg",
            "msg",
            is_flag=True,
            help="Print the handshake messages and the record headers, both directions "
            "(>>> sent, <<< received), as s_client does; after the handoff the records "
            "the layer writes and reads. On stdout (stderr with --json).",
        ),
        click.option(
            "-debug",
            "--debug",
            "debug",
            is_flag=True,
            help="-msg plus a hex dump of every record on the wire.",
        ),
        click.option(
            "-state",
            "--state",
            "state",
            is_flag=True,
            help="Print the handshake states (SSL_connect:... / SSL_accept:...) on stderr.",
        ),
        click.option(
            "-brief",
            "--brief",
            "brief",
            is_flag=True,
            help="s_client's/s_server's short summary once connected (protocol, cipher, "
            "peer certificate, verification, ALPN, offload) on stderr.",
        ),
        click.option(
            "-keylogfile",
            "--keylogfile",
            "keylogfile",
            metavar="FILE",
            shell_complete=complete.files,
            envvar="SSLKEYLOGFILE",
            show_envvar=True,
            help="Append TLS secrets in NSS key log format (for Wireshark).",
        ),
        click.option(
            "--offload",
            type=click.Choice(offload_choices()),
            default="auto",
            show_default=True,
            help="Record layer: kernel kTLS where available else software "
            "(auto), the software layer (sw), the kernel (kernel), "
            "stay in pyOpenSSL (none), or TX through a simulated "
            "TLS-offload NIC (sim-nic, or another driver plug-in).",
        ),
        click.option(
            "--wire",
            type=click.Choice(WIRES),
            default="model",
            show_default=True,
            help="Where a NIC meets TCP: the in-process wire model (model), or a real "
            "wire (netns: two network namespaces, the kernel's TCP, the NIC in its own "
            "process; needs root and /dev/net/tun).",
        ),
        click.option(
            "--faults",
            metavar="SPEC",
            help="Seeded wire faults. --wire model (with a NIC): "
            "reorder=0.02,split=0.05,dup=0.01,drop=0.01,redirect=0.01,seed=7; "
            "--wire netns (real frames, both ways): drop,dup,reorder,delay=MS,seed.",
        ),
        click.option(
            "--mss",
            type=ByteSize(1, 1 << 20),
            metavar="BYTES",
            help="With a NIC on --wire model: TCP segment size (default 65536, one TSO segment).",
        ),
        click.option(
            "--rx-resync",
            type=click.Choice(list(RX_RESYNC)),
            help="With a NIC (either wire), which also decrypts what it receives: how it "
            "gets back in sync after a lost or reordered segment - it finds a header and "
            "asks (driver, the default), the stack hints the next record (core), or "
            "mlx5's asynchronous request (async).",
        ),
        click.option(
            "--pcap",
            metavar="FILE",
            shell_complete=complete.files,
            help="With --wire netns: capture the peer side of the wire (after the NIC) "
            "into FILE, pcapng with the session's secrets embedded (tshark -r FILE "
            "decrypts it); FILE must not exist. Needs dumpcap and editcap.",
        ),
        click.option(
            "-quiet", "--quiet", "-q", "quiet", is_flag=True, help="Only errors and warnings."
        ),
        click.option(
            "-v",
            "--verbose",
            count=True,
            help="-v: the peer certificate, its SHA-256 and the sequence numbers at "
            "handoff; -vv: also -state; -vvv: also -msg.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def _control_socket_option(f: F) -> F:
    """``--control-socket PATH`` for commands that serve one (``send``, ``serve``)."""
    return click.option(
        "--control-socket",
        "control_socket",
        metavar="PATH",
        type=click.Path(path_type=Path),
        help="Answer `tlsctl inspect-context` on this Unix socket, or as <pid>.sock in "
        "this directory (default: $XDG_RUNTIME_DIR/tlsctl/<pid>.sock).",
    )(f)


def start_control_server(path: Path | None) -> ControlServer:
    """The process's control socket for ``inspect-context``: an explicit
    ``--control-socket`` that cannot be used safely is one line, exit status 1;
    the default place unusable is a warning (the command works on)."""
    from tlsctl.control import ControlServer, ControlSocketError

    try:
        return ControlServer.start(path)
    except ControlSocketError as exc:
        raise click.ClickException(str(exc)) from None


def parse_hostport(value: str, default_host: str | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, a service name as port, or (with a
    default host) ``PORT`` (:func:`tlsctl.addresses.parse_hostport`)."""
    try:
        return addresses.parse_hostport(value, default_host)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class ByteSize(click.ParamType[int]):
    """``1048576``, ``64K``, ``1M``, ``2G`` (:func:`tlsctl.units.parse_size`)."""

    name = "BYTES"

    def __init__(self, minimum: int = 1, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            size = parse_size(value, minimum=self.minimum)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if self.maximum is not None and size > self.maximum:
            self.fail(f"{value!r}: at most {self.maximum} bytes", param, ctx)
        return size


class Fingerprint(click.ParamType[bytes]):
    """A SHA-256 fingerprint, with or without colons, any case
    (:func:`tlsctl.verify.parse_pin`; loaded only when the option is given)."""

    name = "FINGERPRINT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> bytes:
        if isinstance(value, bytes):
            return value
        from tlsctl.verify import parse_pin

        try:
            return parse_pin(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _key_update_option(f: F) -> F:
    return click.option(
        "--key-update-every",
        "key_update_every",
        type=ByteSize(),
        metavar="BYTES",
        help="TLS 1.3: send a KeyUpdate (update_not_requested) and switch to the next "
        "TX key every BYTES of application data sent (K/M/G suffixes). "
        "Not with a NIC offload (sim-nic) yet: it cannot rekey.",
    )(f)
