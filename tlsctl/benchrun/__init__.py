"""``tlsctl bench`` as a library: plain TCP, pyOpenSSL, this layer and a NIC, side by side.

::

    from tlsctl.benchrun import Bench, BenchOptions

    bench = Bench(BenchOptions(size=64 << 20, modes=("tcp", "sw", "sim-nic"), repeat=3))
    rows = bench.run(on_progress=print)  # one dict per mode (results.SCHEMA)
    # cut by an exception (a signal handler's)? bench.rows() has what was measured

Modules, one concern each:

- :mod:`.options`: :class:`BenchOptions`, what a run is asked to do.
- :mod:`.modes`: the mode names and why one cannot run here.
- :mod:`.runner`: :class:`Bench`, set-up, the interleaved rounds, tear-down.
- :mod:`.job`: one stream of one mode (what a sender process is handed).
- :mod:`.senders`: the tcp, userspace and kTLS-layer senders.
- :mod:`.openssl`: the ``openssl s_server -WWW`` + curl reference mode.
- :mod:`.receiver`: the loopback receiver process.
- :mod:`.rxbench`: ``direction="rx"``: the receiving host measured.
- :mod:`.report`: the receiver's byte-count report.
- :mod:`.procs`: child processes that end with the bench; their CPU time.
- :mod:`.results`: per-stream results, per-mode aggregates, the JSON rows.
"""

from __future__ import annotations

from tlsctl.benchrun.errors import BenchError, ModeUnavailable
from tlsctl.benchrun.modes import ALL_MODES, DEFAULT_MODES, TLS_MAX_RECORD, parse_modes
from tlsctl.benchrun.options import BenchOptions, Remote
from tlsctl.benchrun.results import SCHEMA, ModeRuns, Result, headline, summarize
from tlsctl.benchrun.runner import Bench, Progress

__all__ = [
    "ALL_MODES",
    "DEFAULT_MODES",
    "SCHEMA",
    "TLS_MAX_RECORD",
    "Bench",
    "BenchError",
    "BenchOptions",
    "ModeRuns",
    "ModeUnavailable",
    "Progress",
    "Remote",
    "Result",
    "headline",
    "parse_modes",
    "summarize",
]
