"""Human and machine output for ``send`` and ``serve``.

Rich formatting only on a terminal; plain ``key: value`` lines when piped
(grep-able, stable); ``--json`` for scripts.  Messages go to stderr and
results to stdout, so ``tlsctl send ... --json | jq`` works.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import click

from tlsctl.units import human_rate

__all__ = [
    "Output",
    "emit_json",
    "emit_summary",
    "human_rate",
    "info",
    "progress_bar",
    "quiet_line",
    "warn",
]

_lock = threading.Lock()
_BAR_MIN = 8 << 20  # transfers this big get a progress bar on a terminal


@dataclass(frozen=True)
class Output:
    """``-quiet``, ``-v`` (count) and ``--json``, parsed."""

    quiet: bool = False
    verbose: int = 0
    as_json: bool = False

    @property
    def status(self) -> bool:
        """Are status lines shown?  Not with -quiet, and not with --json
        (stdout is for the JSON; stderr stays for warnings and errors)."""
        return not (self.quiet or self.as_json)


def info(msg: str, *, quiet: bool = False) -> None:
    """A progress or status line on stderr (suppressed by -quiet)."""
    if not quiet:
        with _lock:
            click.echo(msg, err=True)


def warn(msg: str) -> None:
    """Warnings are shown even with -quiet."""
    with _lock:
        click.echo(msg, err=True)


def quiet_line(_msg: str) -> None:
    """A line nobody asked for (the callback for a suppressed kind)."""


def _nothing(_done: int) -> None:
    pass


@contextlib.contextmanager
def progress_bar(total: int) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on stderr for a transfer of ``total`` bytes
    when stderr is a terminal and the transfer is big enough to watch; the
    function it yields takes the bytes done so far."""
    if not sys.stderr.isatty() or total < _BAR_MIN:
        yield _nothing
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task("send", total=total)
        yield lambda done: bar.update(task, completed=done)


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
