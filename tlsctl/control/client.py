"""The control socket's client: list the tlsctl processes, fetch their state, watch.

What ``tlsctl inspect-context`` shows, without the showing: every running
tlsctl process is asked on its control socket (:mod:`.server`), stale
sockets of killed processes are removed on the way, and the answers become
one document (``inspect-context --json``)::

    {"processes": [{"pid", "uid", "argv", "started", "control_socket",
                    "protocol", "stats", "connections": [...]}],
     "stats": {...}}                                # only with stats=True

The client checks the server's uid (SO_PEERCRED) before believing it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offload.stats import TLS_STAT_NAMES, parse_proc_tls_stat
from tlsctl.control.paths import ControlSocketError, pid_of, remove_if_stale, socket_paths
from tlsctl.control.protocol import MAX_RESPONSE, peer_uid, read_line, send_line

PROC_TLS_STAT = "/proc/net/tls_stat"
"""The kernel's kTLS counters (present when its tls module is loaded)."""


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
        send_line(s, request or {"op": "list", "show_secrets": False})
        raw = read_line(s, MAX_RESPONSE)
    try:
        reply = json.loads(raw)
    except ValueError:
        raise ControlSocketError(f"{path}: reply is not JSON") from None
    if not isinstance(reply, dict):
        raise ControlSocketError(f"{path}: reply is not a JSON object")
    if "error" in reply:
        raise ControlSocketError(f"{path}: {reply['error']}")
    return reply


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
        file_pid = pid_of(p)
        if pid is not None and file_pid is not None and file_pid != pid:
            continue
        ans = Answer(p)
        try:
            ans.data = query(p, {"op": "list", "show_secrets": show_secrets}, timeout)
        except (ConnectionRefusedError, FileNotFoundError):
            ans.stale = True
            remove_if_stale(p)
        except ControlSocketError as exc:
            ans.problem = str(exc)
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


class ControlClient:
    """Asks the control sockets at ``where``: the per-user directory (None),
    a directory of sockets, or one socket file.

    Scanning a directory, a socket that cannot be asked is one line to
    ``warn`` and the others are answered.  An explicit socket *file* is the
    only one asked, so a problem with it (permission denied, another user's,
    no answer) or a stale file (nobody listens: removed) is a
    :class:`ControlSocketError` naming it.
    """

    def __init__(
        self,
        where: Path | None = None,
        *,
        show_secrets: bool = False,
        timeout: float = 2.0,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.where = where
        self.show_secrets = show_secrets
        self.timeout = timeout
        self._warn = warn or (lambda _m: None)

    def processes(self, pid: int | None = None) -> list[dict[str, Any]]:
        """Each answering process's reply, with the ``control_socket`` it came from
        (``pid``: only that process)."""
        where = self.where
        try:
            explicit = where is not None and not where.is_dir()
            answers = discover(where, show_secrets=self.show_secrets, pid=pid, timeout=self.timeout)
        except OSError as exc:  # a directory or socket we may not even look at
            raise ControlSocketError(
                f"cannot read {exc.filename or where}: {exc.strerror or exc}"
            ) from None
        for a in answers:
            if a.problem:
                if explicit:
                    raise ControlSocketError(a.problem)
                self._warn(a.problem)
        if explicit and pid is None and not answers:
            assert where is not None
            gone = not (where.exists() or where.is_symlink())
            raise ControlSocketError(
                f"no tlsctl process listens on {where}: a stale socket "
                f"left by a process that ended{' (removed)' if gone else ''}"
            )
        return [{**a.data, "control_socket": str(a.path)} for a in answers if a.data is not None]

    def state(
        self, pid: int | None = None, *, stats: bool = False, proc_tls_stat: str = PROC_TLS_STAT
    ) -> dict[str, Any]:
        """The whole document (``{"processes": [...]}``, plus ``"stats"``:
        :func:`summed_stats`)."""
        processes = self.processes(pid)
        doc: dict[str, Any] = {"processes": processes}
        if stats:
            doc["stats"] = summed_stats(processes, proc_tls_stat)
        return doc

    def watch(
        self,
        interval: float,
        pid: int | None = None,
        *,
        stats: bool = False,
        proc_tls_stat: str = PROC_TLS_STAT,
    ) -> Iterator[dict[str, Any]]:
        """:meth:`state` now and then every ``interval`` seconds, forever."""
        while True:
            yield self.state(pid, stats=stats, proc_tls_stat=proc_tls_stat)
            time.sleep(interval)


def summed_stats(
    processes: list[dict[str, Any]], proc_tls_stat: str = PROC_TLS_STAT
) -> dict[str, Any]:
    """Counters over all processes: the layer's (``/proc/net/tls_stat`` names),
    the NICs' of live connections (ethtool names), and the kernel's own
    file if present (``proc_net_tls_stat``: null otherwise)."""
    tls = dict.fromkeys(TLS_STAT_NAMES, 0)
    device: dict[str, int] = {}
    for p in processes:
        for name, value in p.get("stats", {}).items():
            tls[name] = tls.get(name, 0) + int(value)
        for c in p.get("connections", []):
            for name, value in (c.get("device") or {}).get("stats", {}).items():
                device[name] = device.get(name, 0) + int(value)
    proc: dict[str, int] | None
    try:
        proc = parse_proc_tls_stat(Path(proc_tls_stat).read_text())
    except OSError:
        proc = None
    return {"processes": len(processes), "tlsctl": tls, "device": device, "proc_net_tls_stat": proc}
