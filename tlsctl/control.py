"""The per-process control socket that ``tlsctl inspect-context`` reads.

Every long-running tlsctl process (``serve``, ``send``) answers questions
about its live kTLS connections on a Unix stream socket, the way ``ss -i``,
``/proc/net/tls_stat`` and ``ethtool -S`` answer them on a kTLS host:

    @control_socket_option                             # --control-socket PATH
    def serve(..., control_socket: Path | None): ...

    control = ControlServer.start(control_socket)      # once per process
    with control.register(ktls_sock, label="client", extra={"file": name}):
        ...                                            # listed until closed
    control.stop()                                     # removes the socket file

Where the socket lives.  ``$XDG_RUNTIME_DIR/tlsctl/<pid>.sock``, or
``<tempdir>/tlsctl-<uid>/<pid>.sock`` without XDG_RUNTIME_DIR: one file per
process in a directory private to the user (mode 0700, owned by the user),
the socket itself 0600.  A directory owned by someone else or open to others
is refused, never "fixed": somebody else could read the keys through it, or
plant a socket that answers with made-up state.  ``--control-socket PATH``
names the socket instead (its directory must not be writable by others unless
sticky, like /tmp); ``--control-socket DIR`` (a private directory) puts
``<pid>.sock`` there, which is what forked workers need.

Who may ask.  The server reads the peer's credentials (SO_PEERCRED) and
answers only the same uid; anybody else gets one ``{"error": ...}`` line and
the door.  Keys and IVs are redacted unless the request asks for
``show_secrets`` (``tlsctl inspect-context --show-secrets``).  The client
checks the server's uid the same way before believing it.

The protocol.  One JSON object per line, one request per connection:
``{"op": "list", "show_secrets": false}`` is answered with
``{"protocol": 1, "pid", "uid", "argv", "started", "connections": [...],
"stats": {...}}``, where each connection is ``KTLSSocket.describe()`` plus
``id``, ``label``, ``registered`` and the caller's ``extra`` fields.
``{"op": "ping"}`` answers ``{"protocol": 1, "pid": ...}``.

Linux has no such socket: the kernel's view comes from netlink (``ss``) and
procfs.  This one exists because the record layer lives in each process.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import json
import os
import select
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import click

from offload.stats import GLOBAL

PROTOCOL = 1
ENV_VAR = "TLSCTL_CONTROL_SOCKET"
"""Environment variable naming the control socket (same as ``--control-socket``)."""

_MAX_REQUEST = 64 * 1024
_MAX_RESPONSE = 64 * 1024 * 1024
_SERVER_IO_TIMEOUT = 2.0
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlSocketError(click.ClickException):
    """The control socket cannot be used safely (one clear line, exit status 1)."""


class Describable(Protocol):
    """What can be registered: ``KTLSSocket`` and anything that looks like it."""

    def describe(self, show_secrets: bool = False) -> dict[str, Any]: ...


# -- where sockets live --------------------------------------------------------


def default_dir() -> Path:
    """``$XDG_RUNTIME_DIR/tlsctl``, else ``<tempdir>/tlsctl-<uid>``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "tlsctl"
    return Path(tempfile.gettempdir()) / f"tlsctl-{os.getuid()}"


def default_path(pid: int | None = None) -> Path:
    """The control socket of process ``pid`` (default: this one)."""
    return default_dir() / f"{os.getpid() if pid is None else pid}.sock"


def check_private_dir(path: Path) -> None:
    """Refuse a directory that is not ours alone (not a symlink, owner = us, 0700-ish).

    Raises :class:`ControlSocketError` with the reason in one line.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ControlSocketError(f"control socket directory {path} does not exist") from None
    except OSError as exc:
        raise ControlSocketError(f"control socket directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ControlSocketError(
            f"refusing control socket directory {path}: not a directory (or a symlink)"
        )
    if st.st_uid != os.getuid():
        raise ControlSocketError(
            f"refusing control socket directory {path}: owned by uid {st.st_uid}, "
            f"not by you (uid {os.getuid()})"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ControlSocketError(
            f"refusing control socket directory {path}: mode {mode:04o} lets others in "
            f"(must be 0700; fix with: chmod 700 {path})"
        )


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700 if missing, then :func:`check_private_dir`."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ControlSocketError(f"cannot create {path}: {exc.strerror}") from None
    check_private_dir(path)
    return path


def check_parent_dir(path: Path) -> None:
    """For an explicit ``--control-socket`` path: its directory must not let others
    replace the socket (owned by us or root; group/other-writable only if sticky)."""
    parent = path.parent
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise ControlSocketError(f"control socket directory {parent}: {exc.strerror}") from None
    if st.st_uid not in (os.getuid(), 0):
        raise ControlSocketError(
            f"refusing control socket directory {parent}: owned by uid {st.st_uid}, "
            f"not by you (uid {os.getuid()})"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:
        raise ControlSocketError(
            f"refusing control socket directory {parent}: mode {mode:04o} lets others "
            "replace the socket (use a 0700 directory)"
        )


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(raw)[1])


F = TypeVar("F", bound=Callable[..., Any])


def control_socket_option(f: F) -> F:
    """``--control-socket PATH`` for commands that serve one (``send``, ``serve``)."""
    return click.option(
        "--control-socket", "control_socket", metavar="PATH",
        type=click.Path(path_type=Path),
        help="Answer `tlsctl inspect-context` on this Unix socket, or as <pid>.sock in "
             "this directory (default: $XDG_RUNTIME_DIR/tlsctl/<pid>.sock).",
    )(f)


def _warn(msg: str) -> None:
    click.echo(f"tlsctl: {msg}", err=True)


# -- the server ----------------------------------------------------------------


@dataclass
class _Entry:
    id: int
    conn: Describable
    label: str
    extra: dict[str, Any]
    registered: float = field(default_factory=time.time)


class Registration:
    """Handle for one registered connection; ``close()`` (or ``with``) removes it."""

    def __init__(self, server: ControlServer | None, entry_id: int) -> None:
        self._server = server
        self.id = entry_id

    def update(self, **extra: Any) -> None:
        """Merge more fields into what this connection reports (e.g. a filename)."""
        if self._server is not None:
            self._server._update(self.id, extra)

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

    Use :meth:`start`; the object is also a context manager that stops it.
    A *disabled* server (``path is None``) accepts registrations and does
    nothing, so callers never need an ``if``.

    Forked workers (``serve --workers``): a server inherited across ``fork``
    starts its own socket for the child at the first ``register`` there
    (``<pid>.sock`` in the same directory; with an explicit socket *file*
    the child has none, with a warning).  Call ``stop()`` in the child before
    ``os._exit`` to remove its file; a file left behind is removed by the
    next ``inspect-context`` as stale.
    """

    _current: ControlServer | None = None

    def __init__(self, path: Path | None, argv: list[str] | None = None) -> None:
        self.path = path
        self._where: Path | None = None  # what start() was given (None: default dir)
        self._inode: tuple[int, int] | None = None
        self._child: ControlServer | None = None  # this server's stand-in after fork
        self.argv = list(sys.argv if argv is None else argv)
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
    ) -> ControlServer:
        """Listen at ``path`` (default: the per-user directory) in a daemon thread.

        ``strict`` (default: true for an explicit path) makes an unusable
        socket a :class:`ControlSocketError`; otherwise a warning goes to
        stderr and a disabled server is returned, so ``send``/``serve`` keep
        working without inspection.
        """
        if strict is None:
            strict = path is not None
        explicit = Path(path) if path is not None else None
        server = cls(None, argv)
        server._where = explicit
        try:
            server._listen(explicit)
        except ControlSocketError as exc:
            if strict:
                raise
            _warn(f"control socket disabled: {exc.message}")
        ControlServer._current = server
        if server.enabled:
            atexit.register(server.stop)
        return server

    @classmethod
    def current(cls) -> ControlServer | None:
        """The server :meth:`start` made last (in a forked child: the child's own)."""
        srv = cls._current
        if srv is None or srv.pid == os.getpid():
            return srv
        return srv._for_forked_child()

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
                _remove_if_stale(final)
                if final.exists() or final.is_symlink():
                    raise ControlSocketError(
                        f"control socket {final} is in use by a running process"
                        if _is_socket(final)
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
        self._thread = threading.Thread(
            target=self._serve, name="tlsctl-control", daemon=True
        )
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
        if ControlServer._current is self:
            ControlServer._current = None

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
        self, conn: Describable, *, label: str = "", extra: dict[str, Any] | None = None
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
            _warn(f"control socket {self._where} belongs to process {self.pid}; "
                  f"process {os.getpid()} has none (give --control-socket a directory)")
            self._child = child = ControlServer(None, self.argv)
            return child
        # No lock: the child has only this thread, and the parent's lock may be
        # held forever in the copy fork made.
        self._child = child = ControlServer.start(self._where, strict=False, argv=self.argv)
        return child

    def unregister(self, entry_id: int) -> None:
        with self._lock:
            self._entries.pop(entry_id, None)

    def _update(self, entry_id: int, extra: dict[str, Any]) -> None:
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is not None:
                entry.extra.update(extra)

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
                desc = dict(e.conn.describe(show_secrets=show_secrets))
            except Exception as exc:  # a connection mid-teardown must not break the list
                if _is_closed(e.conn):
                    self.unregister(e.id)
                    continue
                desc = {"error": f"{type(exc).__name__}: {exc}"}
            desc.update(e.extra)
            desc["id"] = e.id
            desc["label"] = e.label
            desc["registered"] = _iso(e.registered)
            conns.append(desc)
        return {
            "protocol": PROTOCOL,
            "pid": self.pid,
            "uid": os.getuid(),
            "argv": self.argv,
            "started": _iso(self.started),
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
                    _send_line(conn, {"error": f"permission denied: uid {uid} is not the owner"})
                    # Swallow (unparsed) what they sent so the close is not a reset
                    # that could eat the error line.
                    conn.shutdown(socket.SHUT_WR)
                    with contextlib.suppress(OSError, ValueError):
                        _read_line(conn, _MAX_REQUEST)
                    return
                request = _read_line(conn, _MAX_REQUEST)
                _send_line(conn, self._handle(request, same_uid=uid == os.getuid()))
            except (OSError, ValueError):
                return  # the client went away or sent garbage: nothing to say
            except Exception as exc:  # never a traceback in the host process
                with contextlib.suppress(OSError):
                    _send_line(conn, {"error": f"internal error: {type(exc).__name__}: {exc}"})

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


def register(
    conn: Describable, *, label: str = "", extra: dict[str, Any] | None = None
) -> Registration:
    """Register with this process's running server, if there is one (else a no-op)."""
    srv = ControlServer.current()
    if srv is None:
        return Registration(None, 0)
    return srv.register(conn, label=label, extra=extra)


# -- the client ----------------------------------------------------------------


@dataclass
class Answer:
    """One control socket's reply (``data``) or why there is none (``problem``)."""

    path: Path
    data: dict[str, Any] | None = None
    problem: str = ""
    stale: bool = False


def query(
    path: Path, request: dict[str, Any] | None = None, timeout: float = 2.0
) -> dict[str, Any]:
    """Send one request to the control socket at ``path`` and return the reply.

    Raises ``OSError`` (connect failures, ``ConnectionRefusedError`` for a
    stale file) or :class:`ControlSocketError` (refused, not ours, bad reply).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(path))
        owner = peer_uid(s)
        if owner != os.getuid():
            raise ControlSocketError(
                f"refusing {path}: served by uid {owner}, not by you (uid {os.getuid()})"
            )
        _send_line(s, request or {"op": "list", "show_secrets": False})
        raw = _read_line(s, _MAX_RESPONSE)
    try:
        reply = json.loads(raw)
    except ValueError:
        raise ControlSocketError(f"{path}: reply is not JSON") from None
    if not isinstance(reply, dict):
        raise ControlSocketError(f"{path}: reply is not a JSON object")
    if "error" in reply:
        raise ControlSocketError(f"{path}: {reply['error']}")
    return reply


def socket_paths(where: Path | None = None) -> list[Path]:
    """The control sockets to ask: every ``*.sock`` in the private directory,
    or, for an explicit socket path, that path."""
    if where is None:
        d = default_dir()
        if not d.exists():
            return []
        check_private_dir(d)
        return sorted(d.glob("*.sock"), key=_pid_key)
    if where.is_dir():
        check_private_dir(where)
        return sorted(where.glob("*.sock"), key=_pid_key)
    return [where]


def discover(
    where: Path | None = None,
    *,
    show_secrets: bool = False,
    pid: int | None = None,
    timeout: float = 2.0,
) -> list[Answer]:
    """Ask every control socket; stale ones (no listener, process gone) are removed.

    Raises :class:`ControlSocketError` only for an unsafe directory, or an
    explicit path that does not exist.
    """
    if where is not None and not (where.exists() or where.is_symlink()):
        raise ControlSocketError(f"no control socket at {where}")
    paths = socket_paths(where)
    out: list[Answer] = []
    for p in paths:
        file_pid = _pid_of(p)
        if pid is not None and file_pid is not None and file_pid != pid:
            continue
        ans = Answer(p)
        try:
            ans.data = query(p, {"op": "list", "show_secrets": show_secrets}, timeout)
        except (ConnectionRefusedError, FileNotFoundError):
            ans.stale = True
            _remove_if_stale(p)
        except ControlSocketError as exc:
            ans.problem = exc.message
        except TimeoutError:
            ans.problem = f"{p}: no answer within {timeout:g}s (process busy or stopped)"
        except OSError as exc:
            ans.problem = f"{p}: {exc.strerror or exc}"
        if ans.stale:
            continue
        if pid is not None and ans.data is not None and ans.data.get("pid") != pid:
            continue
        out.append(ans)
    return out


# -- helpers -------------------------------------------------------------------


def _send_line(sock: socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(json.dumps(obj, default=str, separators=(",", ":")).encode() + b"\n")


def _read_line(sock: socket.socket, limit: int) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise ValueError("message too long")
    return bytes(buf).split(b"\n", 1)[0]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_closed(conn: Describable) -> bool:
    fileno = getattr(conn, "fileno", None)
    if fileno is None:
        return False
    try:
        return int(fileno()) < 0
    except (OSError, ValueError):
        return True


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def _pid_of(path: Path) -> int | None:
    stem = path.name.removesuffix(".sock")
    return int(stem) if stem.isdigit() else None


def _pid_key(path: Path) -> tuple[int, str]:
    return (_pid_of(path) or 0, path.name)


def _remove_if_stale(path: Path) -> None:
    """Remove a socket file nobody listens on (left by a killed process).

    Only our own sockets are touched; a refused connect is the proof (the
    process is gone, or its pid was reused by something that is not tlsctl).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(os.fspath(path))
        except ConnectionRefusedError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                return
        else:
            return  # somebody listens: not stale
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def iter_connections(answers: list[Answer]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(process, connection) pairs over ``discover()``'s answers."""
    for a in answers:
        if a.data is None:
            continue
        for c in a.data.get("connections", []):
            yield a.data, c
