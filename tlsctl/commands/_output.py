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
    "raw_write",
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


def raw_write(*, err: bool) -> Callable[[str], None]:
    """A writer of whole blocks of lines to stderr or stdout, flushed, never
    interleaved with another thread's block (-msg, -state)."""
    stream = sys.stderr if err else sys.stdout

    def write(text: str) -> None:
        with _lock:
            stream.write(text)
            stream.flush()

    return write


def warn(msg: str) -> None:
    """Warnings are shown even with -quiet."""
    with _lock:
        click.echo(msg, err=True)


def quiet_line(_msg: str) -> None:
    """A line nobody asked for (the callback for a suppressed kind)."""


def _nothing(_done: int) -> None:
    pass


@contextlib.contextmanager
def progress_bar(total: int | None) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on stderr while ``total`` bytes go out.

    Shown when stderr is a terminal, even if stdout is piped (as curl does),
    for a transfer big enough to watch: percentage, bytes in binary units
    (a 2 GiB file shows 2.0 GiB, not "2.1 GB"), rate and ETA.  ``total``
    None (stdin) counts the bytes sent.  The function it yields takes the
    bytes done so far.
    """
    if not sys.stderr.isatty() or (total is not None and total < _BAR_MIN):
        yield _nothing
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.text import Text

    from tlsctl.units import human_size

    class Sent(ProgressColumn):
        """Bytes sent so far, for a stream of unknown length."""

        def render(self, task: Task) -> Text:
            return Text(f"{human_size(int(task.completed))} sent", style="progress.download")

    columns: list[ProgressColumn] = [
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ]
    if total is None:
        columns = [Sent(), TransferSpeedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("send", total=total)
        yield lambda done: bar.update(task, completed=done)


def emit_json(record: dict[str, Any]) -> None:
    """One JSON object per line on stdout (flushed: a test may be waiting)."""
    with _lock:
        sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
        sys.stdout.flush()


def emit_summary(title: str, fields: dict[str, Any], *, console: Any = None) -> None:
    """A table on a terminal, ``key: value`` lines otherwise.

    A nested mapping (device counters, faults injected) is a table of its
    own in the value cell on a terminal, and indented ``name: value`` lines
    when piped, as ``ethtool -S`` prints statistics.  On a terminal too
    narrow for the widest value (a SHA-256 is 64 characters) beside its key,
    the plain lines are printed instead: one value then wraps once at the
    terminal's edge rather than being folded inside a cell over three lines.
    """
    if console is not None or sys.stdout.isatty():
        from rich.console import Console

        con = console if console is not None else Console()
        if con.width >= _table_width(fields):
            con.print(_table(title, fields))
            return
    with _lock:
        sys.stdout.write("".join(_lines(fields)))
        sys.stdout.flush()


def _lines(fields: dict[str, Any], indent: str = "") -> Iterator[str]:
    for k, v in fields.items():
        if isinstance(v, dict):
            yield f"{indent}{k}:{'' if v else ' (none)'}\n"
            yield from _lines(v, indent + "     ")
        else:
            yield f"{indent}{k}: {v}\n"


def _table_width(fields: dict[str, Any]) -> int:
    """Columns the table needs: the widest key and scalar value, borders."""
    keys, values = [0], [0]
    for k, v in fields.items():
        if isinstance(v, dict):
            keys.append(len(k))
            values.append(_table_width(v) - 4 if v else len("(none)"))
        else:
            keys.append(len(k))
            values.append(len(str(v)))
    return max(keys) + max(values) + 7  # "│ " key " │ " value " │"


def _table(title: str | None, fields: dict[str, Any]) -> Any:
    from rich.table import Table

    if title is None:  # nested in a cell: no frame of its own
        table = Table(show_header=False, box=None)
    else:
        table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in fields.items():
        if isinstance(v, dict):
            table.add_row(k, _table(None, v) if v else "(none)")
        else:
            table.add_row(k, str(v))
    return table
