"""The TLS server behind ``tlsctl serve``, as a library that prints nothing.

- :mod:`.setup`: :class:`ServeOptions` (the command line, parsed) and
  :func:`prepare` (context, handler, listening socket; every start-up check).
- :mod:`.run`: :func:`run` serves a prepared server, in one process or
  ``--workers`` forked ones, with ``serve``'s signals; :class:`ServeHooks`
  are the callbacks that receive what happens.
- :mod:`.server`: :class:`Server`, the accept loop and one thread per
  connection, one record per connection.
- :mod:`.handlers`: what a connection's data is for (sink, hash, echo,
  :class:`Store` for ``-o``/``--save-dir``); :mod:`.www`: ``-WWW``.
- :mod:`.workers`: forked workers on one listening socket;
  :mod:`.ratelog`: repeated log lines, counted.
"""

from __future__ import annotations

from tlsctl.server.run import ServeHooks, run
from tlsctl.server.server import HANDSHAKE_TIMEOUT, Server, ServerConfig, default_max_conns
from tlsctl.server.setup import HandlerMode, Listening, ServeOptions, prepare

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "HandlerMode",
    "Listening",
    "ServeHooks",
    "ServeOptions",
    "Server",
    "ServerConfig",
    "default_max_conns",
    "prepare",
    "run",
]
