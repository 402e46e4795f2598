"""Serving a :class:`~tlsctl.server.setup.Listening` server: one process or
``--workers N`` forked ones, with ``serve``'s signals.

SIGINT/SIGTERM/SIGHUP stop accepting (the loop notices within 0.25 s) and
give running connections a moment before they are cut; SIGUSR1 makes every
live TLS 1.3 connection send a KeyUpdate.  With workers the parent forwards
them (:mod:`.workers`).  Signal handlers can only be installed in the main
thread: a server run from another thread (``send --loopback``) has none.

Nothing here prints: each connection's record, the server's own warnings
and the end of each server go to the :class:`ServeHooks` callbacks.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tlsctl.control import Registrar
from tlsctl.exitcodes import ExitStatus
from tlsctl.handshake import HandshakeResult
from tlsctl.server.handlers import Store
from tlsctl.server.server import RecordSink, Server
from tlsctl.server.setup import Listening
from tlsctl.server.workers import run_workers

__all__ = ["ServeHooks", "install_signals", "run"]


def _drop_record(_rec: object, _head: str) -> None:
    pass


def _drop(_what: object) -> None:
    pass


@dataclass(frozen=True)
class ServeHooks:
    """What the caller is told, and what it lends.

    ``on_record``: every connection's record and the label of its log
    line; ``warn``: the server's own problems (rate-limited) and workers
    that died; ``done``: a server (one per worker) stopped accepting and
    every connection ended.  ``registrar``: lists the live kTLS connections
    (the command's control server); ``worker_exit``: runs in each forked
    worker on its way out (``os._exit`` skips atexit).
    """

    on_record: RecordSink = _drop_record
    warn: Callable[[str], None] = _drop
    done: Callable[[Server], None] = _drop
    registrar: Registrar | None = None
    worker_exit: Callable[[], None] | None = None
    connected: Callable[[HandshakeResult, str, str], None] | None = None
    """Once a connection is on its record layer: the handshake, the offload
    in use and the log line's label (``-brief``)."""
    started: Callable[[Server], None] | None = None
    """The server (one process, no ``--workers``) just before it accepts:
    e.g. ``serve --exec-peer`` stops it accepting once the peer exits."""


def run(listening: Listening, hooks: ServeHooks) -> ExitStatus:
    """Serve until stopped (or ``naccept``); the status of the run: OK when
    every connection ended cleanly, INCOMPLETE if one did not, FAILED when a
    worker died."""
    opts = listening.opts
    config = opts.server_config(listening.max_conns)

    def make_server(worker: int | None) -> Server:
        handler = listening.handler
        if isinstance(handler, Store) and worker is not None:
            handler = dataclasses.replace(handler, worker=worker)
        return Server(
            listening.listener,
            listening.ctx,
            handler,
            config,
            keylog=listening.keylog,
            worker=worker,
            registrar=hooks.registrar,
            on_record=hooks.on_record,
            warn=hooks.warn,
            connected=hooks.connected,
        )

    def serve(server: Server) -> ExitStatus:
        server.serve_forever()
        hooks.done(server)
        return server.status

    if opts.workers > 1:

        def prepare(worker: int) -> Callable[[], ExitStatus]:
            server = make_server(worker)
            install_signals(server)
            return lambda: serve(server)

        # A worker's first registration starts its own control socket
        # (<pid>.sock); os._exit skips atexit, so the worker stops it on the way out.
        return run_workers(
            opts.workers, listening.listener, prepare, warn=hooks.warn, on_exit=hooks.worker_exit
        )
    server = make_server(None)
    install_signals(server)
    if hooks.started is not None:
        hooks.started(server)
    return serve(server)


def install_signals(server: Server) -> None:
    """SIGINT/SIGTERM/SIGHUP: stop accepting (the loop notices within 0.25 s);
    SIGUSR1: rekey every live TLS 1.3 connection."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(_sig: int, _frame: object) -> None:
        server.stop.set()

    def key_update(_sig: int, _frame: object) -> None:
        server.key_update_all()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    signal.signal(signal.SIGUSR1, key_update)
