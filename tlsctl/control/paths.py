"""Where control sockets live, and which places are safe to use.

``$XDG_RUNTIME_DIR/tlsctl/<pid>.sock``, or ``<tempdir>/tlsctl-<uid>/<pid>.sock``
without XDG_RUNTIME_DIR: one file per process in a directory private to the
user (mode 0700, owned by the user), the socket itself 0600.  A directory
owned by someone else or open to others is refused, never "fixed":
somebody else could read the keys through it, or plant a socket that
answers with made-up state.  An explicit socket path's directory must not
be writable by others unless sticky (like /tmp); an explicit directory
(private) gets ``<pid>.sock`` files, which is what forked workers need.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import tempfile
from pathlib import Path


class ControlSocketError(Exception):
    """The control socket cannot be used safely, or did not answer as it must
    (one line for the user)."""


def default_dir() -> Path:
    """``$XDG_RUNTIME_DIR/tlsctl``, else ``<tempdir>/tlsctl-<uid>``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "tlsctl"
    return Path(tempfile.gettempdir()) / f"tlsctl-{os.getuid()}"


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


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def pid_of(path: Path) -> int | None:
    """The pid in a ``<pid>.sock`` name (None for any other name)."""
    stem = path.name.removesuffix(".sock")
    return int(stem) if stem.isdigit() else None


def _pid_key(path: Path) -> tuple[int, str]:
    return (pid_of(path) or 0, path.name)


def remove_if_stale(path: Path) -> None:
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
