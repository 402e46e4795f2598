"""How ``tlsctl inspect-context`` shows the control sockets' document.

Plain text for pipes (``key value`` pairs, one connection per block) and
rich tables for a terminal; the document itself comes from
:class:`tlsctl.control.ControlClient` (``--json`` prints it as is).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tlsctl.control import PROC_TLS_STAT, default_dir
from tlsctl.units import human_size


def _nonzero(stats: dict[str, Any] | None) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in (stats or {}).items() if v]


def _argv(p: dict[str, Any]) -> str:
    argv = [str(a) for a in p.get("argv", [])]
    if argv:
        argv[0] = Path(argv[0]).name
    return " ".join(argv)


def _dash(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def _empty_note(where: Path | None) -> str:
    return f"no running tlsctl process found (looked in {where or default_dir()})"


def render_text(doc: dict[str, Any], show_stats: bool, where: Path | None = None) -> str:
    """Plain text for pipes: ``key value`` pairs, one connection per block."""
    out: list[str] = []
    if show_stats:
        out.extend(_stats_text(doc["stats"]))
        return "\n".join(out) + "\n"
    if not doc["processes"]:
        return _empty_note(where) + "\n"
    for p in doc["processes"]:
        conns = p.get("connections", [])
        out.append(
            f"pid {p.get('pid')}  started {p.get('started')}  connections {len(conns)}  {_argv(p)}"
        )
        for c in conns:
            out.extend("  " + line for line in _conn_text(c))
    return "\n".join(out) + "\n"


def _conn_text(c: dict[str, Any]) -> list[str]:
    lines = [
        f"conn {c.get('id')} {c.get('label') or '-'}  peer {_dash(c.get('peer'))}  "
        f"TLS {_dash(c.get('version'))} {_dash(c.get('cipher'))}  "
        f"tx {c.get('tx_conf')} rx {c.get('rx_conf')}",
        f"  tx_rec_seq {_dash(c.get('tx_rec_seq'))}  rx_rec_seq {_dash(c.get('rx_rec_seq'))}  "
        f"bytes_sent {c.get('bytes_sent', 0)}  bytes_received {c.get('bytes_received', 0)}",
    ]
    if "error" in c:
        lines.append(f"  error {c['error']}")
    dev = c.get("device")
    if dev:
        lines.append(
            f"  device {dev.get('name')} ({dev.get('driver')})  "
            f"expected_tcp_seq {_dash(dev.get('expected_tcp_seq'))}  "
            f"records_in_flight {_dash(dev.get('records_in_flight'))}"
        )
    tls = _nonzero(c.get("stats"))
    if tls:
        lines.append("  tls_stat " + " ".join(f"{k} {v}" for k, v in tls))
    if dev and _nonzero(dev.get("stats")):
        lines.append("  ethtool " + " ".join(f"{k} {v}" for k, v in _nonzero(dev.get("stats"))))
    rx_offload = c.get("rx_offload")
    if rx_offload:
        lines.append("  rx_offload " + " ".join(f"{k} {v}" for k, v in rx_offload.items()))
    for d in ("tx", "rx"):
        crypto = c.get(f"{d}_crypto")
        if isinstance(crypto, dict):
            lines.append(f"  {d}_crypto " + " ".join(f"{k} {v}" for k, v in crypto.items()))
        blob = c.get(f"{d}_crypto_info")
        if blob and blob != "redacted":
            lines.append(f"  {d}_crypto_info {blob}")
    return lines


def _stats_text(stats: dict[str, Any]) -> list[str]:
    out = [f"tlsctl counters, summed over {stats['processes']} process(es):"]
    out.extend(f"  {k:<32}{v}" for k, v in stats["tlsctl"].items())
    if stats["device"]:
        out.append("device counters (live connections):")
        out.extend(f"  {k:<32}{v}" for k, v in stats["device"].items())
    proc = stats["proc_net_tls_stat"]
    if proc is None:
        out.append(f"{PROC_TLS_STAT}: not present (the kernel's tls module is not loaded)")
    else:
        out.append(f"{PROC_TLS_STAT} (the kernel's kTLS):")
        out.extend(f"  {k:<32}{v}" for k, v in proc.items())
    return out


def _human(n: Any) -> str:
    return human_size(n, "B") if isinstance(n, int) else _dash(n)


def render_rich(
    doc: dict[str, Any], show_stats: bool, width: int = 200, where: Path | None = None
) -> RenderableType:
    """Tables for a terminal: two-line cells (TX over RX); the counters get a
    column of their own on a wide terminal, a table below on a narrow one."""
    if show_stats:
        return _stats_table(doc["stats"])
    if not doc["processes"]:
        return Text(_empty_note(where), style="dim")
    inline = width >= 120
    parts: list[RenderableType] = []
    for p in doc["processes"]:
        conns = p.get("connections", [])
        t = Table(
            title=f"pid {p.get('pid')}  {_argv(p)}",
            title_justify="left",
            title_style="bold",
            # The footer names its process: with several processes (and
            # counters tables between them) it must not read as the
            # next table's header.
            caption=f"pid {p.get('pid')}: started {p.get('started')} · {len(conns)} connection(s)",
            caption_justify="left",
            box=box.SIMPLE_HEAD,
            expand=False,
        )
        t.add_column("id", justify="right")
        t.add_column("label\npeer", no_wrap=True)
        t.add_column("TLS\ncipher", no_wrap=True)
        t.add_column("TX conf\nRX conf")
        t.add_column("TX rec_seq\nRX rec_seq", justify="right", no_wrap=True)
        t.add_column("NIC exp TCP seq\nrecs in flight", justify="right", no_wrap=True)
        t.add_column("bytes sent\nreceived", justify="right", no_wrap=True)
        if inline:
            t.add_column("counters", overflow="fold", min_width=24)
        below = Table(
            title=f"counters of pid {p.get('pid')}", title_justify="left", box=box.SIMPLE_HEAD
        )
        below.add_column("id", justify="right")
        below.add_column("tls_stat / ethtool", overflow="fold")
        for c in conns:
            dev = c.get("device") or {}
            counters = [f"{k} {v}" for k, v in _nonzero(c.get("stats"))]
            counters += [f"[cyan]{k}[/] {v}" for k, v in _nonzero(dev.get("stats"))]
            counters += [f"[magenta]{k}[/] {v}" for k, v in (c.get("rx_offload") or {}).items()]
            if "error" in c:
                counters.insert(0, f"[red]{c['error']}[/]")
            row = [
                str(c.get("id")),
                f"{c.get('label') or '-'}\n{_dash(c.get('peer'))}",
                f"{_dash(c.get('version'))}\n{_dash(c.get('cipher'))}",
                f"{_conf(c.get('tx_conf'))}\n{_conf(c.get('rx_conf'))}",
                f"{_dash(c.get('tx_rec_seq'))}\n{_dash(c.get('rx_rec_seq'))}",
                f"{_dash(dev.get('expected_tcp_seq'))}\n{_dash(dev.get('records_in_flight'))}"
                if dev
                else "-",
                f"{_human(c.get('bytes_sent'))}\n{_human(c.get('bytes_received'))}",
            ]
            if inline:
                row.append("\n".join(counters) or "-")
            elif counters:
                below.add_row(str(c.get("id")), " · ".join(counters))
            t.add_row(*row, end_section=True)
        parts.append(t)
        if below.row_count:
            parts.append(below)
        secrets = _secrets_table(conns)
        if secrets is not None:
            parts.append(secrets)
    return Group(*parts)


def _conf(v: Any) -> str:
    colours = {"device": "green", "kernel": "green", "sw": "yellow", "none": "dim"}
    s = _dash(v)
    return f"[{colours.get(s, 'white')}]{s}[/]"


def _secrets_table(conns: Iterable[dict[str, Any]]) -> Table | None:
    t = Table(title="secrets (--show-secrets)", title_justify="left", title_style="bold red")
    for col in ("id", "dir", "key", "iv", "salt", "crypto_info"):
        t.add_column(col, overflow="fold")
    rows = 0
    for c in conns:
        for d in ("tx", "rx"):
            crypto = c.get(f"{d}_crypto")
            if isinstance(crypto, dict) and crypto.get("key") not in (None, "redacted"):
                t.add_row(
                    str(c.get("id")),
                    d,
                    crypto.get("key", ""),
                    crypto.get("iv", ""),
                    crypto.get("salt", ""),
                    str(c.get(f"{d}_crypto_info", "")),
                )
                rows += 1
    return t if rows else None


def _stats_table(stats: dict[str, Any]) -> RenderableType:
    proc = stats["proc_net_tls_stat"]
    t = Table(
        title=f"TLS counters, summed over {stats['processes']} tlsctl process(es)",
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
    )
    t.add_column("counter")
    t.add_column("tlsctl", justify="right")
    if proc is not None:
        t.add_column(PROC_TLS_STAT, justify="right")
    names = list(stats["tlsctl"]) + [k for k in (proc or {}) if k not in stats["tlsctl"]]
    for i, k in enumerate(names):
        row = [k, _dash(stats["tlsctl"].get(k))]
        if proc is not None:
            row.append(_dash(proc.get(k)))
        t.add_row(*row, end_section=i == len(names) - 1)
    for k, v in stats["device"].items():
        t.add_row(f"[cyan]{k}[/]", str(v), *(["-"] if proc is not None else []))
    if proc is not None:
        return t
    return Group(
        t,
        Text(f"{PROC_TLS_STAT}: not present (the kernel's tls module is not loaded)", style="dim"),
    )
