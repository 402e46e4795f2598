"""``--pcap FILE``: a capture of the real wire that Wireshark decrypts by itself.

What crossed the peer side's link, after the NIC (``dumpcap`` on ``nic0``
in the peer namespace: the ciphertext the NIC produced, retransmissions
included), as pcapng, with the session's secrets embedded by ``editcap
--inject-secrets tls,KEYLOG`` (a Decryption Secrets Block), so ``tshark -r
FILE`` shows the application data with no key log option at all.

The file holds the session's keys: it is created 0600, exclusively, and
never through a symlink; a run that fails half-way leaves no file that
looks complete.  The capture and the finished file are written into
nameless files (``O_TMPFILE``) in the target directory, and only the
finished one is given its name, by ``linkat``, which fails rather than
replace anything already there.  Where the file system has no
``O_TMPFILE``, a temporary name made with ``O_CREAT|O_EXCL|O_NOFOLLOW`` is
linked the same way and removed.

``dumpcap`` and ``editcap`` are Debian's wireshark-common (``apt-get
install tshark``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING

from tlsctl.tlsconf import ConfigError

if TYPE_CHECKING:
    from offload.netwire.netns import NetnsWire

__all__ = ["Capture", "KeylogBuffer", "check_target", "tools_missing"]

_TOOLS = ("dumpcap", "editcap")
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 15.0
SETTLE_QUIET = 0.5
"""How long the capture file must not grow before dumpcap is stopped:
over twice libpcap's TPACKET_V3 block timeout (about 0.2 s here)."""
SETTLE_LIMIT = 10.0
_TMPFILE_UNSUPPORTED = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}


class KeylogBuffer:
    """NSS key log lines kept in memory (a ``KeylogSink``) for the capture."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, line: bytes) -> None:
        with self._lock:
            self.lines.append(bytes(line))

    def __repr__(self) -> str:  # never the secrets
        return f"KeylogBuffer({len(self.lines)} lines)"


def tools_missing() -> str | None:
    """The one line to show when dumpcap/editcap are not installed, or None."""
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if not missing:
        return None
    return (
        f"--pcap needs {' and '.join(missing)} (Debian: apt-get install tshark), "
        "which this machine lacks"
    )


def check_target(path: str) -> tuple[int, str]:
    """The directory (an open descriptor) and the name ``path`` will get;
    ConfigError (one line) when it exists already (never overwritten,
    a symlink included) or its directory cannot take it."""
    parent, name = os.path.split(os.path.abspath(path))
    if not name:
        raise ConfigError(f"--pcap {path}: give a file name")
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"--pcap {path}: cannot use {parent}: {exc.strerror}") from None
    try:
        os.lstat(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        os.close(fd)
        raise ConfigError(f"--pcap {path}: {exc.strerror}") from None
    else:
        os.close(fd)
        raise ConfigError(
            f"--pcap {path} exists (not overwritten: remove it or choose another name)"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        os.close(fd)
        raise ConfigError(f"--pcap {path}: cannot write in {parent}")
    return fd, name


class _Nameless:
    """A file in ``dir_fd`` with no name yet (or a private temporary one)."""

    def __init__(self, dir_fd: int, name: str) -> None:
        self.dir_fd = dir_fd
        self.temp: str | None = None
        try:
            self.fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in _TMPFILE_UNSUPPORTED:
                raise
            self.temp = f".{name}.{secrets.token_hex(4)}.part"
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self.fd = os.open(self.temp, flags, 0o600, dir_fd=dir_fd)

    @property
    def path(self) -> str:
        """A path another process can open it by (given the descriptor)."""
        return f"/dev/fd/{self.fd}"

    def link(self, name: str) -> None:
        """Give it ``name``: EEXIST (nothing replaced) if the name is taken."""
        if self.temp is None:
            os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=self.dir_fd, follow_symlinks=True)
        else:
            os.link(
                self.temp,
                name,
                src_dir_fd=self.dir_fd,
                dst_dir_fd=self.dir_fd,
                follow_symlinks=False,
            )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if self.temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temp, dir_fd=self.dir_fd)
            self.temp = None


_DROPPED = re.compile(r"Packets received/dropped on interface .*?: (\d+)/(\d+)")


def dropped_packets(stats: str) -> int | None:
    """The packets dumpcap says it missed, from the statistics it prints on
    stderr when it stops (``Packets received/dropped on interface 'nic0':
    R/D ...``); None when the line is not there."""
    found = _DROPPED.findall(stats)
    return sum(int(d) for _r, d in found) if found else None


def settle(fd: int, quiet: float = SETTLE_QUIET, limit: float = SETTLE_LIMIT) -> None:
    """Wait until the capture written to ``fd`` has not grown for ``quiet``
    seconds (at most ``limit``): then dumpcap holds no frame it has not
    written, and a SIGINT loses nothing.

    Why not a fixed short wait: libpcap reads the kernel's TPACKET_V3 ring
    a block at a time, and a block that is not full reaches dumpcap only
    when its timeout (about 0.2 s) retires it.  dumpcap stopped before that
    exits without the frames in that block, and its statistics do not
    count them as dropped (received 0/0): the capture silently lacks the
    transfer's last frames.  The fixed 0.2 s wait this replaces was at that
    edge, which made tshark's stream differ from what the peer received
    now and then under load."""
    start = last_change = time.monotonic()
    size = os.fstat(fd).st_size
    while True:
        time.sleep(0.05)
        now = time.monotonic()
        grown = os.fstat(fd).st_size
        if grown != size:
            size, last_change = grown, now
        elif now - last_change >= quiet or now - start >= limit:
            return


class Capture:
    """``dumpcap`` on the peer side's link of ``wire`` while the block runs;
    :meth:`finish` injects ``keylog``'s secrets and names the file."""

    def __init__(self, wire: NetnsWire, path: str, keylog: KeylogBuffer) -> None:
        missing = tools_missing()
        if missing:
            raise ConfigError(missing)
        self.path = path
        self.keylog = keylog
        self.dir_fd, self.name = check_target(path)
        self.raw = _Nameless(self.dir_fd, self.name)
        self.proc: subprocess.Popen[bytes] | None = None
        self.dropped: int | None = None
        """Packets the capture missed (dumpcap's own count at the end), None if unknown."""
        from tlsctl.realwire import PEER_SIDE

        # -B: a kernel buffer of 64 MiB (2 MiB by default): 64 KiB GSO frames
        # at Gbit/s fill 2 MiB in milliseconds when dumpcap waits for a core.
        cmd = ["dumpcap", "-q", "-n", "-B", "64", "-i", "nic0", "-f", "tcp", "-w", "-"]
        try:
            self.proc = subprocess.Popen(
                wire.argv(PEER_SIDE, cmd),
                stdin=subprocess.DEVNULL,
                stdout=self.raw.fd,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            self._wait_started()
        except BaseException:
            self.close()
            raise

    def _wait_started(self) -> None:
        """dumpcap writes the pcapng header once the interface is open."""
        proc = self.proc
        assert proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while os.fstat(self.raw.fd).st_size == 0:
            if proc.poll() is not None:
                raise ConfigError(f"--pcap: dumpcap failed: {self._stderr(proc)}")
            if time.monotonic() > deadline:
                raise ConfigError(f"--pcap: dumpcap did not start in {_START_TIMEOUT:g} s")
            time.sleep(0.02)

    @staticmethod
    def _stderr(proc: subprocess.Popen[bytes]) -> str:
        err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
        return err.splitlines()[-1] if err else f"status {proc.returncode}"

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            settle(self.raw.fd)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)  # dumpcap flushes and exits
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stderr is not None:
            self.dropped = dropped_packets(proc.stderr.read().decode(errors="replace"))
            proc.stderr.close()

    def finish(self) -> int:
        """Stop the capture, embed the secrets, give the file its name;
        the file's size.  ConfigError (one line) when any step fails: then
        no file of that name was made."""
        self._stop()
        keys = _Nameless(self.dir_fd, self.name)
        out = _Nameless(self.dir_fd, self.name)
        try:
            os.write(keys.fd, b"".join(line + b"\n" for line in self.keylog.lines))
            r = subprocess.run(
                [
                    "editcap",
                    "--inject-secrets",
                    f"tls,{keys.path}",
                    self.raw.path,
                    out.path,
                ],
                pass_fds=(keys.fd, self.raw.fd, out.fd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=300,
                check=False,
            )
            if r.returncode != 0:
                err = r.stderr.decode(errors="replace").strip().splitlines()
                raise ConfigError(
                    f"--pcap: editcap failed: {err[-1] if err else f'status {r.returncode}'}"
                )
            try:
                out.link(self.name)
            except FileExistsError:
                raise ConfigError(
                    f"--pcap {self.path} appeared during the run (not overwritten; "
                    "the capture is discarded)"
                ) from None
            return os.fstat(out.fd).st_size
        finally:
            keys.close()
            out.close()
            self.close()

    def close(self) -> None:
        """Stop without keeping anything (idempotent)."""
        self._stop()
        self.raw.close()
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1
