"""``tlsctl doctor``: is kTLS usable on this host, and if not, why.

The probing lives in :mod:`tlsctl.doctor` (loaded when the command runs, not
for ``--help``); here: the options, the rendering (a table on a terminal,
``check: answer`` lines when piped, one JSON object with ``--json``) and the
exit status.

``--json`` (stable; new keys may be added, none renamed)::

    {"ktls_usable": bool, "kernel_release": str,
     "checks": {KEY: {"title": str, "ok": true|false|null, "required": bool,
                      "detail": str, "reason": str|null, "fix": str|null, ...facts}}}

KEYs: kernel, tls_module, tcp_ulp, keys, cipher_tls12_aes_gcm_128 ...
cipher_tls13_chacha20_poly1305, rekey_tls13, option_tls_tx_zerocopy_ro,
option_tls_rx_expect_no_pad, option_tls_tx_max_payload_len,
proc_net_tls_stat, nic_tls_offload, openssl, python_ssl.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from tlsctl.exitcodes import CommandFailed, ExitStatus

if TYPE_CHECKING:
    from tlsctl.doctor import Report

EPILOG = """\b
Examples:
  tlsctl doctor                                   # the table, each "no" with why and a fix
  tlsctl doctor --json | jq '.checks.rekey_tls13.ok'
  tlsctl doctor >/dev/null && tlsctl send FILE -connect host:4433 --offload kernel

\b
The probes use loopback TCP pairs and dummy keys; nothing leaves the host.
doctor never runs modprobe: its TCP_ULP probe makes the kernel load a
missing tls module exactly as it would for any process with CAP_NET_ADMIN
(as root, a "loadable" module is then loaded).  Exit status: 0 when kTLS is
usable (the tls ULP attaches and the kernel takes TX and RX keys for at
least one version x cipher), 1 when it is not.
"""


@click.command(epilog=EPILOG)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One JSON object: {"ktls_usable": bool, "checks": {...}}.',
)
@click.option("--no-nics", "no_nics", is_flag=True, help="Skip the NIC offload features.")
@click.option(
    "--no-libraries",
    "no_libraries",
    is_flag=True,
    help="Skip the OpenSSL and Python ssl checks (they run openssl).",
)
def doctor(as_json: bool, no_nics: bool, no_libraries: bool) -> None:
    """Is kTLS usable on this host, and if not, why.

    Kernel and tls module, TCP_ULP "tls", TX/RX keys for every TLS version x
    cipher, TLS 1.3 rekey, the optional SOL_TLS options, /proc/net/tls_stat,
    NICs with TLS offload, and whether OpenSSL and Python's ssl can use kTLS.
    """
    from tlsctl.doctor import diagnose

    report = diagnose(nic_probe=not no_nics, library_probe=not no_libraries)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), sort_keys=False) + "\n")
    elif sys.stdout.isatty():
        _render_rich(report)
    else:
        _render_text(report)
    if not report.usable:
        first = report.blockers()[0]
        raise CommandFailed(
            f"kTLS is not usable here: {first.reason or first.detail}", ExitStatus.FAILED
        )


def _verdict(report: Report) -> str:
    return (
        "kTLS usable: " + ("yes" if report.usable else "no") + f" (Linux {report.kernel_release})"
    )


def _render_text(report: Report) -> None:
    """``title: answer  detail`` per check, ``why:``/``fix:`` indented under a no."""
    lines = [_verdict(report)]
    for c in report.checks:
        lines.append(f"{c.title}: {c.answer}  {c.detail}")
        if c.ok is False:
            lines.append(f"    why: {c.reason}")
            lines.append(f"    fix: {c.fix}")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def _render_rich(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    style = {True: "green", False: "red", None: "dim"}
    table = Table(title=_verdict(report), title_justify="left")
    table.add_column("check", style="bold", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("why not / fix", overflow="fold")
    for c in report.checks:
        why = Text()
        if c.ok is False:
            why.append(c.reason)
            why.append("\nfix: ", style="bold")
            why.append(c.fix)
        table.add_row(c.title, Text(c.answer, style=style[c.ok]), c.detail, why)
    Console(highlight=False).print(table)
