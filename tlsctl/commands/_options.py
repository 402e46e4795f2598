"""Options shared by ``send`` and ``serve``, in OpenSSL's and GNU's spelling.

People arrive from ``openssl s_client``/``s_server`` with ``-connect``,
``-CAfile`` and ``-tls1_3`` in their fingers, so every option OpenSSL has is
accepted with one dash as well as two (click treats a multi-letter
single-dash name as a long option).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from tlsctl.commands._tlsconf import TlsOptions

F = TypeVar("F", bound=Callable[..., Any])


def tls_options(f: F) -> F:
    """Version, cipher, CA, keylog, offload and output options."""
    decorators = [
        click.option("-tls1_2", "--tls1_2", "--tls1.2", "tls1_2", is_flag=True,
                     help="Only TLS 1.2."),
        click.option("-tls1_3", "--tls1_3", "--tls1.3", "tls1_3", is_flag=True,
                     help="Only TLS 1.3."),
        click.option("-cipher", "--cipher", "cipher", metavar="LIST",
                     help="TLS 1.2 cipher list (OpenSSL syntax)."),
        click.option("-ciphersuites", "--ciphersuites", "ciphersuites", metavar="LIST",
                     help="TLS 1.3 cipher suites (colon-separated)."),
        click.option("-CAfile", "--CAfile", "--cafile", "cafile", metavar="PEM",
                     type=click.Path(dir_okay=False),
                     help="Trusted CA certificates (instead of the system store)."),
        click.option("-keylogfile", "--keylogfile", "keylogfile", metavar="FILE",
                     envvar="SSLKEYLOGFILE", show_envvar=True,
                     help="Append TLS secrets in NSS key log format (for Wireshark)."),
        click.option("--offload", type=click.Choice(["auto", "sw", "kernel", "none"]),
                     default="auto", show_default=True,
                     help="Record layer: kernel kTLS where available else software "
                          "(auto), the software layer (sw), the kernel (kernel), or "
                          "stay in pyOpenSSL (none)."),
        click.option("-quiet", "--quiet", "-q", "quiet", is_flag=True,
                     help="Only errors and warnings."),
        click.option("-v", "--verbose", count=True, help="More detail (repeat for more)."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def tls_options_from(kw: dict[str, Any]) -> TlsOptions:
    return TlsOptions(
        tls1_2=bool(kw.get("tls1_2")),
        tls1_3=bool(kw.get("tls1_3")),
        cipher=kw.get("cipher"),
        ciphersuites=kw.get("ciphersuites"),
        cafile=kw.get("cafile"),
    )


def parse_hostport(value: str, default_host: str | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or (with a default host) ``PORT``."""
    host: str | None
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            raise click.BadParameter(f"expected [HOST]:PORT, got {value!r}")
        host, port_s = value[1:end], value[end + 2 :]
    elif ":" in value:
        host, _, port_s = value.rpartition(":")
    else:
        host, port_s = default_host, value
    if not host:
        if default_host is None:
            raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
        host = default_host
    try:
        port = int(port_s)
    except ValueError:
        raise click.BadParameter(f"bad port in {value!r}") from None
    if not 0 <= port <= 65535:
        raise click.BadParameter(f"port out of range in {value!r}")
    return host, port
