"""The control socket's server: this process's live connections, for ``inspect-context``.

Every long-running tlsctl process (``serve``, ``send``) answers questions
about its live kTLS connections on a Unix stream socket, the way ``ss -i``,
``/proc/net/tls_stat`` and ``ethtool -S`` answer them on a kTLS host.  The
command that owns the process makes the server and hands it (as a
:class:`Registrar`) to whatever establishes connections; nothing registers
behind the caller's back::

    control = ControlServer.start(path)                # once per process
    reg = control.register(ktls_sock, label="client", extra={"file": name})
    ...                                                # listed until closed
    reg.close()
    control.stop()                                     # removes the socket file

Who may ask: the server reads the peer's credentials (SO_PEERCRED) and
answers only the same uid; anybody else gets one ``{"error": ...}`` line
and the door.  Keys and IVs are redacted unless the request asks for
``show_secrets``.  Each connection is listed as its state's JSON view
(:func:`state_view`) plus ``id``, ``label``, ``registered`` and the
caller's ``extra`` fields.

Linux has no such socket: the kernel's view comes from netlink (``ss``) and
procfs.  This one exists because the record layer lives in each process.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from offload.stats import GLOBAL
from tlsctl.control.paths import (
    ControlSocketError,
    check_parent_dir,
    check_private_dir,
    default_dir,
    ensure_private_dir,
    is_socket,
    remove_if_stale,
)
from tlsctl.control.protocol import MAX_REQUEST, PROTOCOL, iso, peer_uid, read_line, send_line

_SERVER_IO_TIMEOUT = 2.0


class StateSnapshot(Protocol):
    """A connection's state at one moment (``offload.state.SocketState``)."""

    def to_json(self) -> dict[str, Any]: ...


class Inspectable(Protocol):
    """What can be registered: ``KTLSSocket`` (its typed ``state()``) and
    anything that looks like it."""

    def state(self, show_secrets: bool = False) -> StateSnapshot: ...


class Registrar(Protocol):
    """What a command hands to the code that establishes connections
    (:class:`ControlServer` is one): ``register`` lists a connection until
    the returned handle is closed."""

    def register(self, conn: Inspectable, *, label: str, extra: dict[str, Any]) -> Registration: ...


def state_view(conn: Inspectable, show_secrets: bool) -> dict[str, Any]:
    """One connection's state as the protocol lists it (keys redacted unless
    ``show_secrets``): the JSON view of the layer's typed ``SocketState``.

    The one place that reads a connection's state (one snapshot, so the
    sequence numbers and counters listed belong together).
    """
    return dict(conn.state(show_secrets).to_json())


def _stderr(message: str) -> None:
    print(f"tlsctl: {message}", file=sys.stderr, flush=True)


@dataclass
class _Entry:
    id: int
    conn: Inspectable
    label: str
    extra: dict[str, Any]
    registered: float = field(default_factory=time.time)


class Registration:
    """Handle for one registered connection; ``close()`` (or ``with``) removes it."""

    def __init__(self, server: ControlServer | None, entry_id: int) -> None:
        self._server = server
        self.id = entry_id

    def close(self) -> None:
        if self._server is not None:
            self._server.unregister(self.id)
            self._server = None

    def __enter__(self) -> Registration:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ControlServer:
    """Answers ``inspect-context`` for this process on a private Unix socket.

    Use :meth:`start`; the object is also a context manager that stops it,
    and a :class:`Registrar`.  A *disabled* server (``path is None``)
    accepts registrations and does nothing, so callers never need an ``if``.

    Forked workers (``serve --workers``): a server inherited across ``fork``
    starts its own socket for the child at the first ``register`` there
    (``<pid>.sock`` in the same directory; with an explicit socket *file*
    the child has none, with a warning).  Call ``stop()`` in the child before
    ``os._exit`` to remove its file; a file left behind is removed by the
    next ``inspect-context`` as stale.
    """

    def __init__(
        self,
        path: Path | None,
        argv: list[str] | None = None,
        warn: Callable[[str], None] = _stderr,
    ) -> None:
        self.path = path
        self._where: Path | None = None  # what start() was given (None: default dir)
        self._inode: tuple[int, int] | None = None
        self._child: ControlServer | None = None  # this server's stand-in after fork
        self.argv = list(sys.argv if argv is None else argv)
        self._warn = warn
        self.pid = os.getpid()
        self.started = time.time()
        self._entries: dict[int, _Entry] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- life cycle

    @classmethod
    def start(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        strict: bool | None = None,
        argv: list[str] | None = None,
        warn: Callable[[str], None] = _stderr,
    ) -> ControlServer:
        """Listen at ``path`` (default: the per-user directory) in a daemon thread.

        ``strict`` (default: true for an explicit path) makes an unusable
        socket a :class:`ControlSocketError`; otherwise ``warn`` gets one
        line (default: ``tlsctl: ...`` on stderr) and a disabled server is
        returned, so ``send``/``serve`` keep working without inspection.
        """
        if strict is None:
            strict = path is not None
        explicit = Path(path) if path is not None else None
        server = cls(None, argv, warn)
        server._where = explicit
        try:
            server._listen(explicit)
        except ControlSocketError as exc:
            if strict:
                raise
            warn(f"warning: control socket disabled: {exc}")
        if server.enabled:
            atexit.register(server.stop)
        return server

    @property
    def enabled(self) -> bool:
        return self.path is not None and not self._stopped

    def _listen(self, explicit: Path | None) -> None:
        if explicit is None:
            final = ensure_private_dir(default_dir()) / f"{self.pid}.sock"
        elif explicit.is_dir():  # a directory of its own: <dir>/<pid>.sock
            check_private_dir(explicit)
            final = explicit.absolute() / f"{self.pid}.sock"
        else:
            final = explicit.absolute()
            check_parent_dir(final)
            if final.exists() or final.is_symlink():
                remove_if_stale(final)
                if final.exists() or final.is_symlink():
                    raise ControlSocketError(
                        f"control socket {final} is in use by a running process"
                        if is_socket(final)
                        else f"refusing to replace {final}: not a socket"
                    )
        if len(os.fsencode(final)) >= 107:
            raise ControlSocketError(f"control socket path too long: {final}")
        # Bind under a temporary name, make it 0600, listen, then rename into
        # place: a client never sees a socket that is not ready or not private.
        tmp = final.with_name(f".{final.name}.{self.pid}.tmp")
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            lst.bind(os.fspath(tmp))
            os.chmod(tmp, 0o600)
            lst.listen(16)
            os.replace(tmp, final)
            st = os.lstat(final)
            self._inode = (st.st_dev, st.st_ino)
        except OSError as exc:
            lst.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ControlSocketError(f"cannot listen on {final}: {exc.strerror or exc}") from None
        self._listener = lst
        self.path = final
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="tlsctl-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and remove the socket file (only in the process that made it)."""
        if self.pid != os.getpid():  # an inherited copy after fork: not ours to remove
            child = self._child
            if child is not None and child.pid == os.getpid():
                child.stop()
            return
        if self._stopped:
            return
        self._stopped = True
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            if self.path is not None:
                with contextlib.suppress(OSError):
                    # Only our own socket: a later process may have taken the name.
                    st = os.lstat(self.path)
                    if (st.st_dev, st.st_ino) == self._inode:
                        self.path.unlink()
            self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1
        with self._lock:
            self._entries.clear()

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- registry

    def register(
        self, conn: Inspectable, *, label: str = "", extra: dict[str, Any] | None = None
    ) -> Registration:
        """Show ``conn`` in ``inspect-context`` until the handle is closed or
        the connection is (a closed socket, ``fileno() < 0``, drops out by itself)."""
        if self.pid != os.getpid():
            child = self._for_forked_child()
            if child is None:
                return Registration(None, 0)
            return child.register(conn, label=label, extra=extra)
        if not self.enabled:
            return Registration(None, 0)  # disabled or stopped: nothing to show
        entry = _Entry(next(self._ids), conn, label, dict(extra or {}))
        with self._lock:
            # Drop connections closed without unregistering, so a long-running
            # server that nobody inspects does not keep them all alive.
            for old in [e for e in self._entries.values() if _is_closed(e.conn)]:
                del self._entries[old.id]
            self._entries[entry.id] = entry
        return Registration(self, entry.id)

    def _for_forked_child(self) -> ControlServer | None:
        """The stand-in server of a forked child (started on first use)."""
        child = self._child
        if child is not None and child.pid == os.getpid():
            return child
        if not self.enabled or self.path is None:
            return None
        if self._where is not None and not self._where.is_dir():
            self._warn(
                f"warning: control socket {self._where} belongs to process {self.pid}; "
                f"process {os.getpid()} has none (give --control-socket a directory)"
            )
            self._child = child = ControlServer(None, self.argv, self._warn)
            return child
        # No lock: the child has only this thread, and the parent's lock may be
        # held forever in the copy fork made.
        self._child = child = ControlServer.start(
            self._where, strict=False, argv=self.argv, warn=self._warn
        )
        return child

    def unregister(self, entry_id: int) -> None:
        with self._lock:
            self._entries.pop(entry_id, None)

    def snapshot(self, show_secrets: bool = False) -> dict[str, Any]:
        """What ``list`` answers: this process and every live registered connection."""
        with self._lock:
            entries = list(self._entries.values())
        conns: list[dict[str, Any]] = []
        for e in entries:
            if _is_closed(e.conn):
                self.unregister(e.id)
                continue
            try:
                desc = state_view(e.conn, show_secrets)
            except Exception as exc:  # a connection mid-teardown must not break the list
                if _is_closed(e.conn):
                    self.unregister(e.id)
                    continue
                desc = {"error": f"{type(exc).__name__}: {exc}"}
            desc.update(e.extra)
            desc["id"] = e.id
            desc["label"] = e.label
            desc["registered"] = iso(e.registered)
            conns.append(desc)
        return {
            "protocol": PROTOCOL,
            "pid": self.pid,
            "uid": os.getuid(),
            "argv": self.argv,
            "started": iso(self.started),
            "connections": conns,
            "stats": GLOBAL.snapshot(),
        }

    # -- the answering thread

    def _serve(self) -> None:
        lst = self._listener
        if lst is None:
            return
        while not self._stopped:
            try:
                ready, _, _ = select.select([lst.fileno(), self._wake_r], [], [])
            except (OSError, ValueError):
                return
            if self._wake_r in ready or self._stopped:
                return
            try:
                conn, _ = lst.accept()
            except OSError:
                time.sleep(0.05)  # e.g. EMFILE: do not spin
                continue
            threading.Thread(
                target=self._answer, args=(conn,), name="tlsctl-control-conn", daemon=True
            ).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(_SERVER_IO_TIMEOUT)
                uid = peer_uid(conn)
                if uid != os.getuid():
                    send_line(conn, {"error": f"permission denied: uid {uid} is not the owner"})
                    # Swallow (unparsed) what they sent so the close is not a reset
                    # that could eat the error line.
                    conn.shutdown(socket.SHUT_WR)
                    with contextlib.suppress(OSError, ValueError):
                        read_line(conn, MAX_REQUEST)
                    return
                request = read_line(conn, MAX_REQUEST)
                send_line(conn, self._handle(request, same_uid=uid == os.getuid()))
            except (OSError, ValueError):
                return  # the client went away or sent garbage: nothing to say
            except Exception as exc:  # never a traceback in the host process
                with contextlib.suppress(OSError):
                    send_line(conn, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    def _handle(self, raw: bytes, same_uid: bool) -> dict[str, Any]:
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            return {"error": "bad request: not JSON"}
        if not isinstance(req, dict):
            return {"error": "bad request: expected a JSON object"}
        op = req.get("op", "list")
        if op == "ping":
            return {"protocol": PROTOCOL, "pid": self.pid}
        if op == "list":
            return self.snapshot(show_secrets=bool(req.get("show_secrets")) and same_uid)
        return {"error": f"unknown op {op!r}"}


def _is_closed(conn: Inspectable) -> bool:
    fileno = getattr(conn, "fileno", None)
    if fileno is None:
        return False
    try:
        return int(fileno()) < 0
    except (OSError, ValueError):
        return True
