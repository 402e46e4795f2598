"""Human and machine output for ``send`` and ``serve``.

Rich formatting only on a terminal; plain ``key: value`` lines when piped
(grep-able, stable); ``--json`` for scripts.  Messages go to stderr and
results to stdout, so ``tlsctl send ... --json | jq`` works.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import click

_lock = threading.Lock()


def info(msg: str, *, quiet: bool = False) -> None:
    """A progress or status line on stderr (suppressed by -quiet)."""
    if not quiet:
        with _lock:
            click.echo(msg, err=True)


def warn(msg: str) -> None:
    """Warnings are shown even with -quiet."""
    with _lock:
        click.echo(msg, err=True)


def human_rate(nbytes: int, seconds: float) -> str:
    if seconds <= 0:
        return "n/a"
    rate = nbytes / seconds
    for unit in ("B/s", "kB/s", "MB/s", "GB/s"):
        if rate < 1000 or unit == "GB/s":
            return f"{rate:.1f} {unit}"
        rate /= 1000
    return f"{rate:.1f} GB/s"  # pragma: no cover


def emit_json(record: dict[str, Any]) -> None:
    """One JSON object per line on stdout (flushed: a test may be waiting)."""
    with _lock:
        sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
        sys.stdout.flush()


def emit_summary(title: str, fields: dict[str, Any]) -> None:
    """A table on a terminal, ``key: value`` lines otherwise."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for k, v in fields.items():
            table.add_row(k, str(v))
        Console().print(table)
        return
    with _lock:
        for k, v in fields.items():
            sys.stdout.write(f"{k}: {v}\n")
        sys.stdout.flush()
