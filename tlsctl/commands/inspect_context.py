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
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from offload.uapi import TLS_1_3_VERSION, CipherType, CryptoInfo
from tlsctl.commands._inspect_render import render_rich, render_text
from tlsctl.control import ENV_VAR, PROC_TLS_STAT, ControlClient, ControlSocketError

# TLS 1.3 AES_GCM_128, iv a0..a7, key 00..0f, salt b0..b3, rec_seq 1.
_EXAMPLE_BLOB = "04033300a0a1a2a3a4a5a6a7000102030405060708090a0b0c0d0e0fb0b1b2b30000000000000001"

EPILOG = f"""\b
A crypto_info blob to try --decode on (TLS 1.3 AES-GCM-128, rec_seq 1):
  {_EXAMPLE_BLOB}

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
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='JSON: {"processes": [{"pid": ..., "connections": [...]}]}; with '
    "--watch, one such object per line (JSON Lines).",
)
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh every SECONDS (default 2) until Ctrl-C.",
)
@click.option("--pid", type=int, default=None, help="Only the tlsctl process with this pid.")
@click.option(
    "--control-socket",
    "control_socket",
    type=click.Path(path_type=Path, readable=False),  # we say why, in one line
    envvar=ENV_VAR,
    show_envvar=True,
    metavar="PATH",
    help="Ask this control socket (or every socket in this directory) "
    "instead of the per-user directory.",
)
@click.option(
    "--show-secrets",
    is_flag=True,
    help="Show keys, IVs, salts and the crypto_info blobs (same user only).",
)
@click.option(
    "--stats",
    "show_stats",
    is_flag=True,
    help="Counters summed over all processes, and /proc/net/tls_stat if present.",
)
@click.option(
    "--decode",
    metavar="HEX|FILE",
    help="Decode a crypto_info blob (hex, or a file of raw bytes or hex; - for stdin) and exit.",
)
@click.option("--proc-tls-stat", default=PROC_TLS_STAT, hidden=True, type=click.Path())
def inspect_context(
    as_json: bool,
    watch: float | None,
    pid: int | None,
    control_socket: Path | None,
    show_secrets: bool,
    show_stats: bool,
    decode: str | None,
    proc_tls_stat: str,
) -> None:
    """Show the live kTLS context of every running tlsctl process.

    Each `tlsctl serve` / `tlsctl send` answers on a control socket private to
    its user ($XDG_RUNTIME_DIR/tlsctl/<pid>.sock); keys and IVs are redacted
    unless --show-secrets.  Stale sockets of killed processes are removed.
    With --watch --json, one JSON document per line (JSON Lines).

    \b
    Examples:
      tlsctl inspect-context                      # every connection of every tlsctl
      tlsctl inspect-context --json | jq '.processes[].connections[].tx_rec_seq'
      tlsctl inspect-context --watch 1            # refresh every second; Ctrl-C quits
      tlsctl inspect-context --pid "$(pgrep -nf 'tlsctl send')" --show-secrets
      tlsctl inspect-context --stats              # counters summed over all processes
      tlsctl inspect-context --control-socket /tmp/ctl.sock  # as given to send/serve
      tlsctl inspect-context --decode blob.bin    # a crypto_info blob (file, hex, -)
    """
    if decode is not None:
        _decode(decode, as_json)
        return
    console = Console(highlight=False)
    if show_secrets:
        click.echo(_SECRET_WARNING, err=True)
    client = ControlClient(
        control_socket,
        show_secrets=show_secrets,
        warn=lambda m: click.echo(f"warning: {m}", err=True),
    )
    try:
        _show(console, client, as_json, watch, pid, show_stats, proc_tls_stat)
    except ControlSocketError as exc:
        raise click.ClickException(str(exc)) from None


def _show(
    console: Console,
    client: ControlClient,
    as_json: bool,
    watch: float | None,
    pid: int | None,
    show_stats: bool,
    proc_tls_stat: str,
) -> None:
    """One look, or (``--watch``) one per interval until Ctrl-C."""
    where = client.where
    if watch is None:
        doc = client.state(pid, stats=show_stats, proc_tls_stat=proc_tls_stat)
        if pid is not None and not doc["processes"]:
            raise click.ClickException(f"no tlsctl process with pid {pid} answers")
        _print(console, doc, as_json, show_stats, where=where)
        return
    looks = client.watch(watch, pid, stats=show_stats, proc_tls_stat=proc_tls_stat)
    try:
        if as_json or not console.is_terminal:
            for doc in looks:
                _print(console, doc, as_json, show_stats, watching=True, where=where)
                sys.stdout.flush()
        else:

            def screen() -> RenderableType:
                head = Text(
                    f"{time.strftime('%H:%M:%S')}  every {watch:g}s · Ctrl-C quits", style="dim"
                )
                return Group(head, render_rich(next(looks), show_stats, console.width, where))

            with Live(screen(), console=console, auto_refresh=False) as live:
                while True:
                    live.update(screen(), refresh=True)
    except KeyboardInterrupt:
        return


def _print(
    console: Console,
    doc: dict[str, Any],
    as_json: bool,
    show_stats: bool,
    watching: bool = False,
    where: Path | None = None,
) -> None:
    """One look; while watching, JSON is one document per line and text gets a stamp."""
    if as_json:
        click.echo(json.dumps(doc, indent=None if watching else 2))
        return
    if console.is_terminal:
        console.print(render_rich(doc, show_stats, console.width, where))
        return
    if watching:
        click.echo(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    click.echo(render_text(doc, show_stats, where), nl=False)


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
