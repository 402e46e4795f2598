"""Host and port as ``openssl s_client``/``s_server`` take and print them.

``HOST:PORT``, ``[V6]:PORT``, a bare ``PORT`` where a default host makes
sense (``-accept 4433``), and a service name for the port
(``localhost:https``).  Addresses print as users paste them back:
``[::1]:4433``, and IPv4-mapped peers of a dual-stack listener as plain
IPv4 (``127.0.0.1:50000``, not ``[::ffff:127.0.0.1]:50000``).
"""

from __future__ import annotations

import ipaddress
import socket


def is_ip(host: str) -> bool:
    """An IPv4 or IPv6 literal (then SNI is not sent and the IP SAN is checked)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_hostport(value: str, default_host: str | None = None) -> tuple[str, int]:
    """``(host, port)``; ValueError with a one-line reason."""
    host: str | None
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            raise ValueError(f"expected [HOST]:PORT, got {value!r}")
        host, port_s = value[1:end], value[end + 2 :]
    elif value.count(":") == 1:
        host, _, port_s = value.partition(":")
    elif ":" in value:
        raise ValueError(f"an IPv6 address needs brackets: [{value.rpartition(':')[0]}]:PORT")
    else:
        host, port_s = default_host, value
    if not host:
        if default_host is None:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        host = default_host
    return host, _port(port_s, value)


def _port(text: str, whole: str) -> int:
    if text.isdigit():
        port = int(text)
        if port > 65535:
            raise ValueError(f"port out of range in {whole!r}")
        return port
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise ValueError(f"bad port in {whole!r} (a number or a service name)") from None


def format_addr(host: str, port: int) -> str:
    """``host:port``, ``[v6]:port``; IPv4-mapped IPv6 shown as IPv4."""
    if host.startswith("::ffff:") and "." in host:
        host = host.removeprefix("::ffff:")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
