"""The per-process control socket that ``tlsctl inspect-context`` reads.

A plain library (no CLI in it): the command that owns a process starts a
:class:`ControlServer` and hands it, as a :class:`Registrar`, to whatever
establishes connections; :class:`ControlClient` asks every server.

- :mod:`.paths`: where sockets live, which directories are safe, stale files.
- :mod:`.protocol`: one JSON line each way, the peer's uid (SO_PEERCRED).
- :mod:`.server`: :class:`ControlServer`, the registry and the answering thread.
- :mod:`.client`: :func:`query`, :func:`discover`, :class:`ControlClient`
  (list processes, fetch the state document, watch).
"""

from __future__ import annotations

from tlsctl.control.client import (
    PROC_TLS_STAT,
    Answer,
    ControlClient,
    discover,
    query,
    summed_stats,
)
from tlsctl.control.paths import ControlSocketError, default_dir, socket_paths
from tlsctl.control.protocol import PROTOCOL
from tlsctl.control.server import (
    ControlServer,
    Inspectable,
    Registrar,
    Registration,
    StateSnapshot,
    state_view,
)

ENV_VAR = "TLSCTL_CONTROL_SOCKET"
"""Environment variable naming the control socket ``inspect-context`` asks
(same as its ``--control-socket``)."""

__all__ = [
    "ENV_VAR",
    "PROC_TLS_STAT",
    "PROTOCOL",
    "Answer",
    "ControlClient",
    "ControlServer",
    "ControlSocketError",
    "Inspectable",
    "Registrar",
    "Registration",
    "StateSnapshot",
    "default_dir",
    "discover",
    "query",
    "socket_paths",
    "state_view",
    "summed_stats",
]
