"""Everything ``tlsctl serve`` decides before the first ``accept``.

:class:`ServeOptions` is the command line, parsed; :func:`prepare` turns it
into a :class:`Listening` server-to-be: the TLS context (a given
certificate or an ephemeral one), the handler for each connection, and
the listening socket.  Every check that can fail does so here, at
start-up, with one line (:class:`~tlsctl.tlsconf.ConfigError`): a file
``-o`` would overwrite, a directory we cannot write in, a port in use.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from cryptography import x509
from OpenSSL import SSL

from tlsctl.addresses import format_addr
from tlsctl.certs import PrivateKey, ephemeral_server_cert, sha256_fingerprint
from tlsctl.handshake import KeylogFile, KeylogSink
from tlsctl.offloadmode import DeviceSpec, Offload
from tlsctl.server.handlers import PARTIAL, Handler, Store, echo, sink
from tlsctl.server.limits import HANDSHAKE_TIMEOUT, default_max_conns
from tlsctl.server.server import ServerConfig
from tlsctl.server.www import StatusPage, Www
from tlsctl.tlsconf import ConfigError, TlsOptions, load_certs, server_context

__all__ = [
    "HandlerMode",
    "Listening",
    "ServeOptions",
    "listen",
    "open_dir",
    "prepare",
    "run_id",
    "store_for_output",
]

_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn

HandlerMode = Literal["sink", "output", "save-dir", "echo", "www", "status"]
"""What each connection's data is for: ``--sink`` (the default), ``-o
FILE``, ``--save-dir DIR``, ``--echo``, ``-WWW DIR``, ``-www`` (status page)."""


@dataclass(frozen=True)
class ServeOptions:
    """``tlsctl serve``'s options, parsed (OpenSSL's spellings in comments).

    ``path`` is the file (``output``) or directory (``save-dir``, ``www``)
    of the handler ``mode``.  ``-o FILE`` stores one connection: the
    command sets ``naccept`` to 1 for it.
    """

    host: str = "::"  # -accept [HOST:]PORT
    port: int = 4433
    cert: str | None = None  # -cert (None: an ephemeral self-signed one)
    key: str | None = None  # -key (default: the -cert file)
    mode: HandlerMode = "sink"
    path: str | None = None
    file_mode: int = 0o600
    keep_partial: bool = True
    naccept: int | None = None  # -naccept
    verify_depth: int = 0  # -verify
    require_depth: int = 0  # -Verify
    timeout: float = 60.0
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_conns: int | None = None
    workers: int = 1
    key_update_every: int | None = None
    tls: TlsOptions = field(default_factory=TlsOptions)
    offload: Offload = "auto"
    device: DeviceSpec | None = None
    keylogfile: str | None = None  # -keylogfile
    count_cpu: bool = False  # each connection's CPU time in its record (--wire netns)
    window: int | None = None  # -w: SO_RCVBUF/SO_SNDBUF of every connection (iperf3's -w)

    def server_config(self, max_conns: int) -> ServerConfig:
        return ServerConfig(
            offload=self.offload,
            device=self.device,
            naccept=self.naccept,
            timeout=self.timeout,
            handshake_timeout=self.handshake_timeout,
            max_conns=max_conns,
            key_update_every=self.key_update_every,
            closes_first=self.mode in ("www", "status"),
            count_cpu=self.count_cpu,
        )


@dataclass
class Listening:
    """A server ready to accept: what :func:`prepare` made of the options.

    ``fingerprint``: SHA-256 of the certificate served (ephemeral or
    ``-cert``'s leaf), as ``send --pin-sha256`` takes it; ``ephemeral``: made
    at start-up (no ``-cert``); ``files``: where stored streams go (a pattern for
    ``--save-dir``), None when nothing is stored.
    """

    opts: ServeOptions
    listener: socket.socket
    ctx: SSL.Context
    handler: Handler
    keylog: KeylogSink | None
    max_conns: int
    fingerprint: str | None = None
    files: str | None = None
    ephemeral: bool = False

    @property
    def bound(self) -> tuple[str, int]:
        addr = self.listener.getsockname()
        return str(addr[0]), int(addr[1])

    @property
    def run(self) -> str | None:
        """The ``--save-dir`` run tag (start time and a random part)."""
        if isinstance(self.handler, Store) and self.handler.run:
            return self.handler.run
        return None


def make_handler(
    mode: HandlerMode, path: str | None, file_mode: int, keep_partial: bool
) -> Handler:
    """The function each connection's data goes through."""
    if mode == "output":
        assert path is not None
        return store_for_output(path, file_mode, keep_partial)
    if mode == "save-dir":
        assert path is not None
        fd = open_dir(path, f"--save-dir {path}")
        return Store(
            dir_fd=fd, dir_path=path, run=run_id(), file_mode=file_mode, keep_partial=keep_partial
        )
    if mode == "echo":
        return echo
    if mode == "www":
        assert path is not None
        if not os.path.exists(path):
            raise ConfigError(f"-WWW {path}: no such directory")
        if not os.path.isdir(path):
            raise ConfigError(f"-WWW {path}: not a directory (give the directory to serve)")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ConfigError(f"-WWW {path}: cannot read the directory")
        return Www(path)
    if mode == "status":
        return StatusPage()
    return sink


def prepare(opts: ServeOptions) -> Listening:
    """Handler, TLS context and listening socket, in the order the checks
    were always made (the handler's files first, the port last)."""
    handler = make_handler(opts.mode, opts.path, opts.file_mode, opts.keep_partial)
    fingerprint = None
    cert_src: x509.Certificate | str
    key_src: PrivateKey | str | None
    if opts.cert is None and opts.key is not None:
        raise ConfigError("-key given without -cert")
    if opts.cert is None:
        ck = ephemeral_server_cert()
        cert_src, key_src = ck.cert, ck.key
        fingerprint = ck.fingerprint
    else:
        cert_src, key_src = opts.cert, opts.key
    ctx = server_context(
        opts.tls,
        cert=cert_src,
        key=key_src,
        verify_client=max(opts.verify_depth, opts.require_depth),
        require_client=opts.require_depth > 0,
    )
    if fingerprint is None and isinstance(cert_src, str):
        fingerprint = sha256_fingerprint(load_certs(cert_src, "-cert")[0])
    keylog = KeylogFile(opts.keylogfile) if opts.keylogfile else None
    listener = listen(opts.host, opts.port, opts.window)
    files = None
    if isinstance(handler, Store):
        files = handler.path(handler.name or f"conn-{handler.run}-w*-NNNNNN.bin")
    return Listening(
        opts,
        listener,
        ctx,
        handler,
        keylog,
        max_conns=opts.max_conns or default_max_conns(),
        fingerprint=fingerprint,
        files=files,
        ephemeral=opts.cert is None,
    )


def listen(host: str, port: int, window: int | None = None) -> socket.socket:
    """Listen on ``host``; ``"::"`` (the default, like s_server) is dual-stack,
    so clients resolving ``localhost`` to ::1 or 127.0.0.1 both get in.

    ``window`` (``-w``, as iperf3's): SO_RCVBUF and SO_SNDBUF, set on the
    listener before ``listen`` so that every accepted connection inherits
    them and its window scale is chosen for them (the kernel doubles the
    value for its bookkeeping and stops autotuning that buffer).  A client
    can then be at most about that much ahead of what the server has read.

    Never SO_REUSEPORT: with it a second ``serve`` (of the same user) binding
    the same port would silently join the group and take a share of the
    connections.  ``--workers`` share this one socket instead (inherited over
    fork), so a port in use is EADDRINUSE here, decided by the kernel's bind
    with no window for a race.
    """
    if host == "::" and not socket.has_ipv6:
        host = "0.0.0.0"
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        if host == "::":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only
        if window is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, window)
        s.bind((host, port))
        s.listen(_BACKLOG)
    except OSError as exc:
        s.close()
        raise ConfigError(
            f"cannot listen on {format_addr(host, port)}: {exc.strerror or exc}"
        ) from None
    return s


def open_dir(path: str, what: str) -> int:
    """A descriptor of the directory files are created in (see Store).

    Checked by creating a file there: an ``O_TMPFILE`` one, which never has
    a name and so leaves nothing behind.  ``access(2)`` alone is not enough:
    it says yes to root for a directory no file can be created in (a
    read-only file system, ``/proc``).  A file system without ``O_TMPFILE``
    falls back on ``access``.  ``what`` is the option and its value.
    """
    where = "" if what.endswith(f" {path}") else f" {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such directory{where}") from None
    except NotADirectoryError:
        raise ConfigError(f"{what}: not a directory{where}") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot write in {path}: {exc.strerror or exc}") from None
    try:
        probe = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=fd)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            os.close(fd)
            raise ConfigError(f"{what}: cannot write in {path}: {exc.strerror or exc}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            os.close(fd)
            raise ConfigError(f"{what}: cannot write in {path}") from None
    else:
        os.close(probe)
    return fd


def store_for_output(output: str, file_mode: int, keep_partial: bool) -> Store:
    """``-o FILE``: refuse at start-up what would fail (or overwrite) later."""
    if os.path.isdir(output):
        raise ConfigError(
            f"-o {output}: is a directory (use --save-dir {output} to store "
            f"one file per connection)"
        )
    parent, name = os.path.split(os.path.abspath(output))
    fd = open_dir(parent, f"-o {output}")
    for taken in (name, name + PARTIAL):
        with contextlib.suppress(FileNotFoundError):
            os.lstat(taken, dir_fd=fd)
            os.close(fd)
            raise ConfigError(
                f"-o {output}: {os.path.join(parent, taken)} exists "
                f"(not overwritten: remove it or choose another name)"
            )
    return Store(
        dir_fd=fd, dir_path=parent, name=name, file_mode=file_mode, keep_partial=keep_partial
    )


def run_id() -> str:
    """Start time (UTC) plus a random tag: unique across runs on one directory,
    even two in the same second, and not guessable in advance by someone
    who would plant a file under the next name."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"
