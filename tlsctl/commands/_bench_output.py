"""What ``tlsctl bench`` shows: the table and chart, CSV, JSON, the progress bar.

The numbers come from :mod:`tlsctl.benchrun` as rows (``benchrun.results``);
this module only lays them out.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from tlsctl.benchrun import Progress, headline
from tlsctl.benchrun.intervals import Interval
from tlsctl.benchrun.results import CSV_FIELDS, TIMES
from tlsctl.units import human_size, rate_unit


def emit(
    rows: list[dict[str, Any]],
    as_json: bool,
    as_csv: bool,
    partial: bool,
    rate_format: str | None = None,
) -> None:
    """The rows on stdout: JSON, CSV, or the table, chart and headline."""
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif as_csv:
        _write_csv(rows)
    else:
        render(rows, partial, rate_format)
    sys.stdout.flush()


def emit_error(message: str, option: str | None) -> None:
    """``--json`` and an error: the error as a JSON object on stdout, where
    the rows would have been (the one line on stderr is the caller's)."""
    sys.stdout.write(json.dumps({"error": {"message": message, "option": option}}) + "\n")
    sys.stdout.flush()


def interval_printer(rate_format: str | None) -> Callable[[str, Interval], None]:
    """Prints one line per ``-i`` interval as it ends, iperf3's columns:
    which stream, the interval, the bytes, the bitrate."""

    def show(mode: str, iv: Interval) -> None:
        span = iv.end - iv.start
        rate = iv.bytes / span if span > 0 else 0.0
        label, per = rate_unit(rate_format, rate)
        sys.stdout.write(
            f"[{mode} r{iv.round} s{iv.stream}] {iv.start:6.2f}-{iv.end:6.2f} sec  "
            f"{human_size(iv.bytes, 'B'):>10}  {rate / per:8.2f} {label}\n"
        )
        sys.stdout.flush()

    return show


def _write_csv(rows: list[dict[str, Any]]) -> None:
    w = csv.DictWriter(
        sys.stdout, fieldnames=list(CSV_FIELDS), lineterminator="\n", extrasaction="ignore"
    )
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None else v for k, v in r.items()})


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(rows: list[dict[str, Any]], partial: bool, rate_format: str | None = None) -> None:
    """Rich table, bar chart and headline on stdout; rates in ``rate_format``
    (``--format``; None: bits per second in the unit that suits the fastest
    mode, one unit for the whole table)."""
    from rich.console import Console
    from rich.table import Table

    # Piped: wide enough for the table rather than rich's 80 columns.
    con = Console() if sys.stdout.isatty() else Console(width=110)
    rx = any(r.get("direction") == "rx" for r in rows)
    title = (
        "tlsctl bench"
        + (" --direction rx (host = the receiver)" if rx else "")
        + (" (interrupted: partial results)" if partial else "")
    )
    t = Table(title=title)
    t.add_column("mode", no_wrap=True)
    fastest = max((r["bytes_per_second"] or 0.0 for r in rows), default=0.0)
    unit, per = rate_unit(rate_format, fastest)
    for name in (
        unit,
        "min-max",
        "host s/GB",
        "dev s/GB",
        "recv s/GB",
        f"CPU{TIMES}tcp",
        "repeats",
    ):
        t.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        if r["skipped"]:
            continue
        span = (
            f"{r['bytes_per_second_min'] / per:.2f}-{r['bytes_per_second_max'] / per:.2f}"
            if r["bytes_per_second_min"] is not None
            else "-"
        )
        t.add_row(
            r["mode"],
            _fmt(r["bytes_per_second"] and r["bytes_per_second"] / per, ".3f"),
            span,
            _fmt(r["host_cpu_s_per_gb"], ".3f"),
            _fmt(r["device_cpu_s_per_gb"], ".3f"),
            _fmt(r["receiver_cpu_s_per_gb"], ".3f"),
            _fmt(r["cpu_vs_tcp"], ".2f"),
            str(r["repeats"]),
        )
    con.print(t)
    for r in rows:
        if r["skipped"]:
            con.print(f"{r['mode']}: skipped: {r['skipped']}", highlight=False)
    ran = [r for r in rows if r["bytes_per_second"] is not None]
    if ran:
        width = 20
        top_tp = max(r["bytes_per_second"] for r in ran) or 1.0
        top_cpu = (
            max((r["host_cpu_s_per_gb"] or 0) + (r["device_cpu_s_per_gb"] or 0) for r in ran) or 1.0
        )
        chart = Table(
            title=f"throughput ({unit}) and CPU per GB (host █, device ▒)",
            show_edge=False,
            box=None,
        )
        chart.add_column("mode", no_wrap=True)
        chart.add_column("throughput", no_wrap=True)
        chart.add_column("CPU s/GB", no_wrap=True)
        for r in ran:
            tp_bar = "█" * max(1, round(width * r["bytes_per_second"] / top_tp))
            host = max(0.0, r["host_cpu_s_per_gb"] or 0.0)
            dev = r["device_cpu_s_per_gb"] or 0.0
            cpu_bar = "█" * round(width * host / top_cpu) + "▒" * round(width * dev / top_cpu)
            chart.add_row(
                r["mode"],
                f"[cyan]{tp_bar}[/] {r['bytes_per_second'] / per:.2f}",
                f"[magenta]{cpu_bar}[/] {host + dev:.2f}",
            )
        con.print(chart)
    con.print(headline(rows))


@contextlib.contextmanager
def progress_bar() -> Iterator[Callable[[Progress], None] | None]:
    """A rich progress bar on stderr when it is a terminal (transient: gone
    before the results are printed); else None (no progress shown)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def step(p: Progress) -> None:
            bar.update(task, total=p.total, completed=p.done, description=str(p))

        yield step
        total = bar.tasks[0].total
        if total is not None:
            bar.update(task, completed=total)
