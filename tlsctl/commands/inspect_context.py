"""``tlsctl inspect-context``: the live kTLS state of every running tlsctl.

What ``ss -ti``, ``/proc/net/tls_stat`` and ``ethtool -S`` show on a kTLS
host, for the record layer that lives inside tlsctl processes: each process
answers on its control socket (``tlsctl.control``), this command asks them
all and prints peer, TLS version, cipher, TX/RX configuration, the live
record sequence numbers, the simulated NIC's expected TCP sequence number and
records in flight, bytes and counters.  ``--decode`` reads a raw
``crypto_info`` blob, the bytes given to ``setsockopt(SOL_TLS, TLS_TX)``.

``--json`` (stable; new keys may be added, none renamed)::

    {"processes": [{"pid": int, "uid": int, "argv": [str], "started": ISO-8601,
                    "control_socket": str, "protocol": 1,
                    "stats": {TlsCurrTxSw: int, ...},          # this process
                    "connections": [{"id": int, "label": str, "peer": "host:port",
                        "backend": "sw"|"kernel", "version": "1.2"|"1.3",
                        "cipher": "AES_GCM_128"|..., "tx_conf"/"rx_conf":
                        "none"|"sw"|"device"|"kernel", "tx_rec_seq"/"rx_rec_seq": int,
                        "tx_crypto"/"rx_crypto": {"key", "iv", "salt"} ("redacted"
                        unless --show-secrets), "tx_crypto_info": hex|"redacted",
                        "bytes_sent"/"bytes_received": int, "stats": {Tls*: int},
                        "device": {"name", "driver", "expected_tcp_seq": int,
                                   "records_in_flight": int, "stats": {tx_tls_*: int},
                                   ...}}]}],   # "device" only on the simulated NIC
     "stats": {"processes": int, "tlsctl": {...}, "device": {...},
               "proc_net_tls_stat": {...}|null}}          # only with --stats

``--watch --json`` prints one such document per line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from offload.stats import TLS_STAT_NAMES, parse_proc_tls_stat
from offload.uapi import TLS_1_3_VERSION, CipherType, CryptoInfo
from tlsctl.control import ENV_VAR, Answer, ControlSocketError, default_dir, discover

PROC_TLS_STAT = "/proc/net/tls_stat"
# TLS 1.3 AES_GCM_128, iv a0..a7, key 00..0f, salt b0..b3, rec_seq 1.
_EXAMPLE_BLOB = "04033300a0a1a2a3a4a5a6a7000102030405060708090a0b0c0d0e0fb0b1b2b30000000000000001"

EPILOG = f"""\b
Examples:
  tlsctl inspect-context                      # every connection of every tlsctl
  tlsctl inspect-context --json | jq '.processes[].connections[].tx_rec_seq'
  tlsctl inspect-context --watch 1            # refresh every second; Ctrl-C quits
  tlsctl inspect-context --pid "$(pgrep -nf 'tlsctl send')" --show-secrets
  tlsctl inspect-context --stats              # counters summed over all processes
  tlsctl inspect-context --control-socket /tmp/ctl.sock  # with send/serve --control-socket
  tlsctl inspect-context --decode {_EXAMPLE_BLOB}

\b
Counters: Tls* are named as in /proc/net/tls_stat (TlsCurrTxSw: connections
with software TX now; TlsTxSw: ever; TlsDecryptError: bad tags; Tls*Rekey*:
TLS 1.3 KeyUpdates).  tx_tls_* are the simulated NIC's, named as mlx5's
`ethtool -S` (encrypted_packets/bytes: fast path; ooo: out-of-order packets;
dump_packets/bytes: bytes replayed to rebuild the NIC state; drop_no_sync_data:
record already freed; skip_no_sync_data: data from before offload started).
"""

_SECRET_WARNING = (
    "warning: --show-secrets prints TLS keys and IVs; anyone who sees this output "
    "can decrypt these connections"
)


@click.command(name="inspect-context", epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True,
              help='JSON: {"processes": [{"pid": ..., "connections": [...]}]}.')
@click.option("--watch", type=click.FloatRange(min=0.1), is_flag=False, flag_value=2.0,
              default=None, metavar="[SECONDS]",
              help="Refresh every SECONDS (default 2) until Ctrl-C.")
@click.option("--pid", type=int, default=None, help="Only the tlsctl process with this pid.")
@click.option("--control-socket", "control_socket",
              type=click.Path(path_type=Path, readable=False),  # we say why, in one line
              envvar=ENV_VAR, show_envvar=True, metavar="PATH",
              help="Ask this control socket (or every socket in this directory) "
                   "instead of the per-user directory.")
@click.option("--show-secrets", is_flag=True,
              help="Show keys, IVs, salts and the crypto_info blobs (same user only).")
@click.option("--stats", "show_stats", is_flag=True,
              help="Counters summed over all processes, and /proc/net/tls_stat if present.")
@click.option("--decode", metavar="HEX|FILE",
              help="Decode a crypto_info blob (hex, or a file of raw bytes or hex; - for "
                   "stdin) and exit.")
@click.option("--proc-tls-stat", default=PROC_TLS_STAT, hidden=True, type=click.Path())
def inspect_context(as_json: bool, watch: float | None, pid: int | None,
                    control_socket: Path | None, show_secrets: bool, show_stats: bool,
                    decode: str | None, proc_tls_stat: str) -> None:
    """Show the live kTLS context of every running tlsctl process.

    Each `tlsctl serve` / `tlsctl send` answers on a control socket private to
    its user ($XDG_RUNTIME_DIR/tlsctl/<pid>.sock); keys and IVs are redacted
    unless --show-secrets.  Stale sockets of killed processes are removed.
    """
    if decode is not None:
        _decode(decode, as_json)
        return
    console = Console(highlight=False)
    if show_secrets:
        click.echo(_SECRET_WARNING, err=True)

    def gather() -> dict[str, Any]:
        return _gather(control_socket, pid, show_secrets, show_stats, proc_tls_stat)

    if watch is None:
        doc = gather()
        if pid is not None and not doc["processes"]:
            raise click.ClickException(f"no tlsctl process with pid {pid} answers")
        _print(console, doc, as_json, show_stats, where=control_socket)
        return
    try:
        if as_json or not console.is_terminal:
            while True:
                _print(console, gather(), as_json, show_stats, watching=True,
                       where=control_socket)
                sys.stdout.flush()
                time.sleep(watch)
        else:
            def screen() -> RenderableType:
                head = Text(f"{time.strftime('%H:%M:%S')}  every {watch:g}s · Ctrl-C quits",
                            style="dim")
                return Group(head, _render_rich(gather(), show_stats, console.width,
                                                control_socket))

            with Live(screen(), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(watch)
                    live.update(screen(), refresh=True)
    except KeyboardInterrupt:
        return


# -- gathering ----------------------------------------------------------------


def _gather(where: Path | None, pid: int | None, show_secrets: bool, with_stats: bool,
            proc_path: str) -> dict[str, Any]:
    """Ask the sockets; one line and exit 1 when nothing can be asked.

    Scanning a directory (the default one, or ``--control-socket DIR``), a
    socket that cannot be used is a line on stderr and the others are
    shown.  An explicit ``--control-socket FILE`` is the only one asked, so
    a problem with it (permission denied, another user's, no answer) or a
    stale file (nobody listens: removed) ends the command with one line
    naming it.
    """
    try:
        explicit = where is not None and not where.is_dir()
        answers = discover(where, show_secrets=show_secrets, pid=pid)
    except OSError as exc:  # a directory or socket we may not even look at
        raise ControlSocketError(f"cannot read {exc.filename or where}: "
                                 f"{exc.strerror or exc}") from None
    for a in answers:
        if a.problem:
            if explicit:
                raise ControlSocketError(a.problem)
            click.echo(f"tlsctl: {a.problem}", err=True)
    if explicit and pid is None and not answers:
        assert where is not None
        gone = not (where.exists() or where.is_symlink())
        raise ControlSocketError(f"no tlsctl process listens on {where}: a stale socket "
                                 f"left by a process that ended{' (removed)' if gone else ''}")
    processes = [_process(a) for a in answers if a.data is not None]
    doc: dict[str, Any] = {"processes": processes}
    if with_stats:
        doc["stats"] = _aggregate(processes, proc_path)
    return doc


def _process(a: Answer) -> dict[str, Any]:
    data = dict(a.data or {})
    data["control_socket"] = str(a.path)
    return data


def _aggregate(processes: list[dict[str, Any]], proc_path: str) -> dict[str, Any]:
    tls = dict.fromkeys(TLS_STAT_NAMES, 0)
    device: dict[str, int] = {}
    for p in processes:
        for name, value in p.get("stats", {}).items():
            tls[name] = tls.get(name, 0) + int(value)
        for c in p.get("connections", []):
            for name, value in (c.get("device") or {}).get("stats", {}).items():
                device[name] = device.get(name, 0) + int(value)
    proc: dict[str, int] | None
    try:
        proc = parse_proc_tls_stat(Path(proc_path).read_text())
    except OSError:
        proc = None
    return {"processes": len(processes), "tlsctl": tls, "device": device,
            "proc_net_tls_stat": proc}


# -- output -------------------------------------------------------------------


def _print(console: Console, doc: dict[str, Any], as_json: bool, show_stats: bool,
           watching: bool = False, where: Path | None = None) -> None:
    """One look; while watching, JSON is one document per line and text gets a stamp."""
    if as_json:
        click.echo(json.dumps(doc, indent=None if watching else 2))
        return
    if console.is_terminal:
        console.print(_render_rich(doc, show_stats, console.width, where))
        return
    if watching:
        click.echo(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    click.echo(_render_text(doc, show_stats, where), nl=False)


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


def _render_text(doc: dict[str, Any], show_stats: bool, where: Path | None = None) -> str:
    """Plain text for pipes: ``key value`` pairs, one connection per block."""
    out: list[str] = []
    if show_stats:
        out.extend(_stats_text(doc["stats"]))
        return "\n".join(out) + "\n"
    if not doc["processes"]:
        return _empty_note(where) + "\n"
    for p in doc["processes"]:
        conns = p.get("connections", [])
        out.append(f"pid {p.get('pid')}  started {p.get('started')}  "
                   f"connections {len(conns)}  {_argv(p)}")
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
    if not isinstance(n, int):
        return _dash(n)
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)  # pragma: no cover


def _render_rich(doc: dict[str, Any], show_stats: bool, width: int = 200,
                 where: Path | None = None) -> RenderableType:
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
        t = Table(title=f"pid {p.get('pid')}  {_argv(p)}", title_justify="left",
                  title_style="bold",
                  caption=f"started {p.get('started')} · {len(conns)} connection(s)",
                  caption_justify="left", box=box.SIMPLE_HEAD, expand=False)
        t.add_column("id", justify="right")
        t.add_column("label\npeer", no_wrap=True)
        t.add_column("TLS\ncipher", no_wrap=True)
        t.add_column("TX conf\nRX conf")
        t.add_column("TX rec_seq\nRX rec_seq", justify="right", no_wrap=True)
        t.add_column("NIC exp TCP seq\nrecs in flight", justify="right", no_wrap=True)
        t.add_column("bytes sent\nreceived", justify="right", no_wrap=True)
        if inline:
            t.add_column("counters", overflow="fold", min_width=24)
        below = Table(title="counters", title_justify="left", box=box.SIMPLE_HEAD)
        below.add_column("id", justify="right")
        below.add_column("tls_stat / ethtool", overflow="fold")
        for c in conns:
            dev = c.get("device") or {}
            counters = [f"{k} {v}" for k, v in _nonzero(c.get("stats"))]
            counters += [f"[cyan]{k}[/] {v}" for k, v in _nonzero(dev.get("stats"))]
            if "error" in c:
                counters.insert(0, f"[red]{c['error']}[/]")
            row = [
                str(c.get("id")),
                f"{c.get('label') or '-'}\n{_dash(c.get('peer'))}",
                f"{_dash(c.get('version'))}\n{_dash(c.get('cipher'))}",
                f"{_conf(c.get('tx_conf'))}\n{_conf(c.get('rx_conf'))}",
                f"{_dash(c.get('tx_rec_seq'))}\n{_dash(c.get('rx_rec_seq'))}",
                f"{_dash(dev.get('expected_tcp_seq'))}\n{_dash(dev.get('records_in_flight'))}"
                if dev else "-",
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
                t.add_row(str(c.get("id")), d, crypto.get("key", ""), crypto.get("iv", ""),
                          crypto.get("salt", ""), str(c.get(f"{d}_crypto_info", "")))
                rows += 1
    return t if rows else None


def _stats_table(stats: dict[str, Any]) -> RenderableType:
    proc = stats["proc_net_tls_stat"]
    t = Table(title=f"TLS counters, summed over {stats['processes']} tlsctl process(es)",
              title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)
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
    return Group(t, Text(f"{PROC_TLS_STAT}: not present (the kernel's tls module is not "
                         "loaded)", style="dim"))


# -- --decode -----------------------------------------------------------------


def _blob_from(arg: str) -> bytes:
    """The bytes of ``arg``: a file (raw bytes or hex text), ``-`` (stdin), or hex."""
    raw: bytes
    if arg == "-":
        raw = sys.stdin.buffer.read()
    elif Path(arg).is_file():
        try:
            raw = Path(arg).read_bytes()
        except OSError as exc:
            raise click.ClickException(f"cannot read {arg}: {exc.strerror}") from None
    else:
        return _unhex(arg, what="argument")
    text = raw.strip()
    if text and all(chr(b) in "0123456789abcdefABCDEFxX: \t\r\n" for b in text):
        return _unhex(text.decode(), what=arg)
    return raw


def _unhex(s: str, what: str) -> bytes:
    t = "".join(s.split()).replace(":", "")
    if t[:2].lower() == "0x":
        t = t[2:]
    try:
        return bytes.fromhex(t)
    except ValueError:
        shown = s if len(s) <= 40 else s[:37] + "..."
        raise click.ClickException(
            f"--decode: {what} {shown!r} is neither an existing file nor hex bytes"
        ) from None


def decode_info(data: bytes) -> dict[str, Any]:
    """A crypto_info blob as a JSON-ready dict (raises OSError EINVAL like the kernel)."""
    info = CryptoInfo.unpack(data)
    return {
        "struct_size": len(data),
        "version": "1.3" if info.version == TLS_1_3_VERSION else "1.2",
        "version_code": info.version,
        "cipher": CipherType(info.cipher).name,
        "cipher_type": int(info.cipher),
        "iv": info.iv.hex(),
        "key": info.key.hex(),
        "salt": info.salt.hex(),
        "rec_seq": info.seq,
        "rec_seq_hex": info.rec_seq.hex(),
    }


def _nonce_note(d: dict[str, Any]) -> str:
    if d["cipher"] == "CHACHA20_POLY1305":
        return "iv XOR rec_seq (no explicit nonce)"
    if d["version"] == "1.3":
        return "(salt || iv) XOR rec_seq"
    return "salt || explicit nonce (carried in each record; the first is iv)"


def _decode(arg: str, as_json: bool) -> None:
    data = _blob_from(arg)
    try:
        d = decode_info(data)
    except OSError as exc:
        raise click.ClickException(
            f"--decode: not a valid crypto_info blob ({len(data)} bytes): {exc.strerror}"
        ) from None
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    rows = [
        ("struct size", f"{d['struct_size']} bytes"),
        ("version", f"TLS {d['version']} (0x{d['version_code']:04x})"),
        ("cipher", f"{d['cipher']} ({d['cipher_type']})"),
        ("iv", d["iv"]),
        ("key", d["key"]),
        ("salt", d["salt"] or "(none)"),
        ("rec_seq", f"{d['rec_seq']} (0x{d['rec_seq_hex']})"),
        ("nonce", _nonce_note(d)),
    ]
    console = Console(highlight=False)
    if console.is_terminal:
        t = Table(title="crypto_info", title_justify="left", show_header=False)
        t.add_column("field", style="bold")
        t.add_column("value", overflow="fold")
        for k, v in rows:
            t.add_row(k, v)
        console.print(t)
    else:
        for k, v in rows:
            click.echo(f"{k:<12}{v}")


__all__ = ["ControlSocketError", "decode_info", "inspect_context"]
