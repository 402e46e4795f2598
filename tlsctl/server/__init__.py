"""The TLS server behind ``tlsctl serve``, as a library that prints nothing.

- :mod:`.setup`: :class:`ServeOptions` (the command line, parsed) and
  :func:`prepare` (context, handler, listening socket; every start-up check).
- :mod:`.serving`: :func:`run` serves a prepared server, in one process or
  ``--workers`` forked ones, with ``serve``'s signals; :class:`ServeHooks`
  are the callbacks that receive what happens.
- :mod:`.server`: :class:`Server`, the accept loop and one thread per
  connection, one record per connection.
- :mod:`.handlers`: what a connection's data is for (sink, hash, echo,
  :class:`Store` for ``-o``/``--save-dir``); :mod:`.www`: ``-WWW``.
- :mod:`.workers`: forked workers on one listening socket;
  :mod:`.ratelog`: repeated log lines, counted; :mod:`.limits`: the
  defaults (connections at once, handshake timeout).

The names below are imported on first use (PEP 562): ``serve --help``
reads the defaults in :mod:`.limits` without loading pyOpenSSL and the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tlsctl.server.limits import HANDSHAKE_TIMEOUT, default_max_conns

if TYPE_CHECKING:
    from tlsctl.server.server import Server, ServerConfig
    from tlsctl.server.serving import ServeHooks, run
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

_HOME = {
    "Server": "server",
    "ServerConfig": "server",
    "ServeHooks": "serving",
    "run": "serving",
    "HandlerMode": "setup",
    "Listening": "setup",
    "ServeOptions": "setup",
    "prepare": "setup",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
