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

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tlsctl import addresses
from tlsctl.commands import _complete as complete
from tlsctl.commands._output import Output
from tlsctl.exitcodes import CommandFailed, ExitStatus
from tlsctl.offloadmode import (
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
    wire: WireSpec | None = None  # --wire netns (None: the in-process wire model)


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
        )
        real_wire = _wire_from(wire, faults, params.pop("pcap"))
    except OffloadOptionError as exc:
        if exc.option is not None:
            raise click.BadParameter(str(exc), param_hint=exc.option) from None
        raise click.UsageError(str(exc)) from None
    tls = tls_options_for(
        offload,
        tls1_2=params.pop("tls1_2"),
        tls1_3=params.pop("tls1_3"),
        cipher=params.pop("cipher"),
        ciphersuites=params.pop("ciphersuites"),
        cafile=params.pop("cafile"),
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


def tls_options_for(
    offload: Offload,
    *,
    tls1_2: bool = False,
    tls1_3: bool = False,
    cipher: str | None = None,
    ciphersuites: str | None = None,
    cafile: str | None = None,
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
        layer=offload if needs_layer(offload) else None,
    )


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
        click.option("-v", "--verbose", count=True, help="More detail (repeat for more)."),
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
