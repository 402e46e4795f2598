"""``tlsctl inspect-context`` and the control socket, with real processes.

A child Python process holds live kTLS connections and registers them with
its control socket; the real ``tlsctl`` command reads them from outside.
Records are captured off the wire by a TCP relay inside the child, so the
keys ``--show-secrets`` prints are checked by decrypting what really went
out, with the independent decoder in ``tests/helpers/wire.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from offload.uapi import TLS_1_2_VERSION, TLS_1_3_VERSION, CipherType, CryptoInfo
from tests.conftest import random_info
from tests.helpers.wire import decrypt_records
from tlsctl.control import (
    ControlServer,
    ControlSocketError,
    discover,
    query,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
TLSCTL = str(Path(sys.executable).parent / "tlsctl")
NOBODY = 65534

# The child: pair A (TLS 1.3, software TX and RX, through a capturing relay)
# and pair B (TLS 1.2 on the simulated NIC, TX only) send a numbered message
# every 20 ms.  Pair B closes when the file argv[3] appears.
CHILD = r"""
import os, socket, sys, threading, time
from offload import KTLSSocket
from offload.netdev import create_device
from offload.wiremodel import TxPipeline
from offload.uapi import SOL_TCP, TCP_ULP, SOL_TLS, TLS_TX, TLS_RX, TLS_1_2_VERSION, \
    TLS_1_3_VERSION, CipherType
from tests.conftest import random_info
from tlsctl.control import ControlServer

ctl_path, capture, close_b = sys.argv[1] or None, sys.argv[2], sys.argv[3]
control = ControlServer.start(ctl_path)

def pair():
    with socket.create_server(("127.0.0.1", 0)) as lst:
        c = socket.create_connection(lst.getsockname())
        s, _ = lst.accept()
    return c, s

def ktls(sock, direction, info, device=None):
    k = KTLSSocket(sock, backend="sw", txpath=None if device is None else TxPipeline(device))
    k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
    k.setsockopt(SOL_TLS, direction, info.pack())
    return k

# Pair A through a relay that appends every byte it forwards to `capture`.
c_a, relay_in = pair()
relay_out, s_a = pair()
def relay():
    with open(capture, "wb", buffering=0) as cap:
        while data := relay_in.recv(65536):
            cap.write(data)
            relay_out.sendall(data)
    relay_out.shutdown(socket.SHUT_WR)
threading.Thread(target=relay, daemon=True).start()
info_a = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128)
tx_a, rx_a = ktls(c_a, TLS_TX, info_a), ktls(s_a, TLS_RX, info_a)

c_b, s_b = pair()
tx_b = ktls(c_b, TLS_TX, random_info(TLS_1_2_VERSION, CipherType.AES_GCM_128),
            device=create_device("sim-nic"))

def drain(k):
    while k.recv(65536):
        pass
threading.Thread(target=drain, args=(rx_a,), daemon=True).start()
def drain_raw(s):
    while s.recv(65536):
        pass
threading.Thread(target=drain_raw, args=(s_b,), daemon=True).start()

h_a = control.register(tx_a, label="client", extra={"pair": "A"})
control.register(rx_a, label="server", extra={"pair": "A"})
h_b = control.register(tx_b, label="client", extra={"pair": "B"})
print("ready", os.getpid(), control.path, flush=True)
i = 0
while True:
    tx_a.sendall(b"msg %08d\n" % i)
    if tx_b is not None:
        tx_b.sendall(b"device %08d\n" % i * 40)
        if os.path.exists(close_b):
            tx_b.close()      # no unregister: a closed socket drops out by itself
            s_b.close()
            tx_b = None
    i += 1
    time.sleep(0.02)
"""


class Child:
    def __init__(self, proc: subprocess.Popen[str], pid: int, path: Path, tmp: Path) -> None:
        self.proc, self.pid, self.path, self.tmp = proc, pid, path, tmp
        self.capture = tmp / "capture.bin"
        self.close_b = tmp / "close-b"


def _readlines(proc: subprocess.Popen[str], n: int, timeout: float) -> list[str]:
    """``n`` lines from the child's stdout, read from the raw pipe (no buffering
    to hide a line from select)."""
    assert proc.stdout is not None
    fd, buf = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"child did not report ready: {buf!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"child exited early: {buf!r}")
        buf += chunk
    return buf.decode().splitlines()[:n]


def _kill(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def child(tmp: Path, ctl_path: Path | None, env: dict[str, str]) -> Iterator[Child]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(ctl_path or ""),
            str(tmp / "capture.bin"),
            str(tmp / "close-b"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            [line] = _readlines(proc, 1, 20)
        except (TimeoutError, RuntimeError) as exc:
            _kill(proc)
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"child failed: {exc} {err}") from None
        _, pid, path = line.split()
        yield Child(proc, int(pid), Path(path), tmp)
    finally:
        _kill(proc)


def tlsctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TLSCTL, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def inspect_json(*args: str, env: dict[str, str]) -> dict[str, Any]:
    r = tlsctl("inspect-context", "--json", *args, env=env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def by_pair(proc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["pair"], c["label"]): c for c in proc["connections"]}


def complete_records(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i + 5 <= len(data):
        (n,) = struct.unpack(">H", data[i + 3 : i + 5])
        if i + 5 + n > len(data):
            break
        out.append(data[i : i + 5 + n])
        i += 5 + n
    return out


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    e = dict(os.environ)
    e["XDG_RUNTIME_DIR"] = str(xdg)
    e["PYTHONPATH"] = str(ROOT)
    e.pop("TLSCTL_CONTROL_SOCKET", None)
    e["COLUMNS"] = "200"
    return e


def test_live_context_secrets_close_and_stale(tmp_path: Path, env: dict[str, str]) -> None:
    with child(tmp_path, None, env) as ch:
        # The default place: $XDG_RUNTIME_DIR/tlsctl/<pid>.sock, 0700 dir, 0600 socket.
        assert ch.path == Path(env["XDG_RUNTIME_DIR"]) / "tlsctl" / f"{ch.pid}.sock"
        assert stat.S_IMODE(os.stat(ch.path.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(ch.path).st_mode) == 0o600
        time.sleep(0.3)

        # Default discovery, twice: rec_seq, bytes and device counters advance.
        first = inspect_json(env=env)
        time.sleep(0.4)
        second = inspect_json("--control-socket", str(ch.path), env=env)
        [p1], [p2] = first["processes"], second["processes"]
        assert p1["pid"] == p2["pid"] == ch.pid
        c1, c2 = by_pair(p1), by_pair(p2)
        assert set(c2) == {("A", "client"), ("A", "server"), ("B", "client")}
        a_tx1, a_tx2 = c1["A", "client"], c2["A", "client"]
        assert (a_tx1["version"], a_tx1["cipher"]) == ("1.3", "AES_GCM_128")
        assert (a_tx1["tx_conf"], a_tx1["rx_conf"]) == ("sw", "none")
        assert isinstance(a_tx2["tx_rec_seq"], int)
        assert a_tx2["tx_rec_seq"] > a_tx1["tx_rec_seq"] >= 5
        assert a_tx2["bytes_sent"] > a_tx1["bytes_sent"]
        rx1, rx2 = c1["A", "server"], c2["A", "server"]
        assert rx2["rx_conf"] == "sw" and rx2["rx_rec_seq"] > rx1["rx_rec_seq"]
        assert rx2["bytes_received"] > rx1["bytes_received"]
        b1, b2 = c1["B", "client"], c2["B", "client"]
        assert b2["tx_conf"] == "device" and b2["version"] == "1.2"
        assert b2["tx_rec_seq"] > b1["tx_rec_seq"]
        d1, d2 = b1["device"], b2["device"]
        assert isinstance(d2["expected_tcp_seq"], int) and "records_in_flight" in d2
        assert d2["expected_tcp_seq"] != d1["expected_tcp_seq"]
        assert d2["stats"]["tx_tls_encrypted_packets"] > d1["stats"]["tx_tls_encrypted_packets"] > 0
        assert p2["stats"]["TlsCurrTxSw"] == 1 and p2["stats"]["TlsCurrTxDevice"] == 1
        assert b2["stats"]["TlsTxDevice"] == 1 and a_tx2["stats"]["TlsTxSw"] == 1
        # Secrets redacted by default, everywhere.
        for c in p2["connections"]:
            for d in ("tx", "rx"):
                if f"{d}_crypto" in c:
                    assert set(c[f"{d}_crypto"].values()) == {"redacted"}
                    assert c[f"{d}_crypto_info"] == "redacted"
        assert "redacted" in json.dumps(p2) and a_tx2["tx_crypto"]["key"] == "redacted"

        # --show-secrets: the key, iv, salt and live rec_seq decrypt the next
        # record captured off the wire.
        r = tlsctl("inspect-context", "--json", "--show-secrets", env=env)
        assert r.returncode == 0 and "warning" in r.stderr and "keys" in r.stderr
        tx = by_pair(json.loads(r.stdout)["processes"][0])["A", "client"]
        k = tx["tx_crypto"]
        info = CryptoInfo.create(
            TLS_1_3_VERSION,
            CipherType.AES_GCM_128,
            key=bytes.fromhex(k["key"]),
            iv=bytes.fromhex(k["iv"]),
            salt=bytes.fromhex(k["salt"]),
            seq=tx["tx_rec_seq"],
        )
        assert CryptoInfo.unpack(bytes.fromhex(tx["tx_crypto_info"])).pack() == info.pack()
        n = tx["tx_rec_seq"]
        deadline = time.monotonic() + 5
        while len(records := complete_records(ch.capture.read_bytes())) <= n:
            assert time.monotonic() < deadline, "record not captured"
            time.sleep(0.05)
        [(ctype, plain)] = decrypt_records(info, records[n])
        assert (ctype, plain) == (23, b"msg %08d\n" % n)
        # ... and the redacted listing could not have done that.
        assert k["key"] not in json.dumps(second)

        # Plain text when piped: one block per connection.
        r = tlsctl("inspect-context", env=env)
        assert r.returncode == 0, r.stderr
        assert f"pid {ch.pid}" in r.stdout and "tx_rec_seq" in r.stdout
        assert "expected_tcp_seq" in r.stdout and "tx_tls_encrypted_packets" in r.stdout
        assert "redacted" in r.stdout

        # --stats: summed counters; /proc/net/tls_stat absent here, or read when present.
        r = tlsctl("inspect-context", "--stats", "--json", env=env)
        st = json.loads(r.stdout)["stats"]
        assert st["tlsctl"]["TlsCurrTxSw"] == 1 and st["tlsctl"]["TlsCurrRxSw"] == 1
        assert st["device"]["tx_tls_encrypted_packets"] > 0
        assert st["proc_net_tls_stat"] is None or "TlsTxSw" in st["proc_net_tls_stat"]
        fake = tmp_path / "tls_stat"
        fake.write_text("TlsCurrTxSw                     7\nTlsTxDevice                     2\n")
        r = tlsctl("inspect-context", "--stats", "--proc-tls-stat", str(fake), env=env)
        assert r.returncode == 0 and "TlsCurrTxSw" in r.stdout and " 7" in r.stdout
        r = tlsctl("inspect-context", "--stats", "--proc-tls-stat", str(tmp_path / "no"), env=env)
        assert r.returncode == 0 and "not present" in r.stdout

        # --pid filters; an unknown pid is one clear error.
        assert inspect_json("--pid", str(ch.pid), env=env)["processes"][0]["pid"] == ch.pid
        r = tlsctl("inspect-context", "--pid", "1", env=env)
        assert r.returncode == 1 and "no tlsctl process with pid 1" in r.stderr
        assert "Traceback" not in r.stderr

        # A connection that ends disappears from the list.
        ch.close_b.touch()
        deadline = time.monotonic() + 5
        while True:
            conns = by_pair(inspect_json(env=env)["processes"][0])
            if ("B", "client") not in conns:
                break
            assert time.monotonic() < deadline, "closed connection still listed"
            time.sleep(0.1)
        assert set(conns) == {("A", "client"), ("A", "server")}
        stats = inspect_json(env=env)["processes"][0]["stats"]
        assert stats["TlsCurrTxDevice"] == 0 and stats["TlsTxDevice"] == 1

        # SIGKILL: the socket file stays behind; the next look removes it quietly.
        ch.proc.send_signal(signal.SIGKILL)
        ch.proc.wait(timeout=5)
        assert ch.path.exists()
        r = tlsctl("inspect-context", "--json", env=env)
        assert r.returncode == 0 and r.stderr == ""
        assert json.loads(r.stdout) == {"processes": []}
        assert not ch.path.exists()
        r = tlsctl("inspect-context", env=env)
        assert r.returncode == 0 and "no running tlsctl process" in r.stdout


def test_explicit_socket_path_and_clean_stop(tmp_path: Path, env: dict[str, str]) -> None:
    ctl = tmp_path / "ctl" / "my.sock"
    ctl.parent.mkdir(mode=0o700)
    with child(tmp_path, ctl, env) as ch:
        assert ch.path == ctl and stat.S_IMODE(os.stat(ctl).st_mode) == 0o600
        doc = inspect_json("--control-socket", str(ctl), env=env)
        assert doc["processes"][0]["pid"] == ch.pid
        assert doc["processes"][0]["control_socket"] == str(ctl)
        # Not in the default directory, so the default look does not see it.
        assert inspect_json(env=env) == {"processes": []}
        # The environment variable works like the option.
        assert inspect_json(env={**env, "TLSCTL_CONTROL_SOCKET": str(ctl)})["processes"]
    # Killed: the explicit socket is stale; it is removed and the one line names it.
    r = tlsctl("inspect-context", "--json", "--control-socket", str(ctl), env=env)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == (
        f"Error: no tlsctl process listens on {ctl}: a stale socket "
        "left by a process that ended (removed)"
    )
    assert not ctl.exists()
    r = tlsctl("inspect-context", "--control-socket", str(ctl), env=env)
    assert r.returncode == 1 and r.stderr.strip() == f"Error: no control socket at {ctl}"

    # In-process: stop() removes the file; registrations vanish with their handle.
    srv = ControlServer.start(ctl, argv=["test"])
    try:

        class Fake:
            def state(self, show_secrets: bool = False) -> SimpleNamespace:
                return SimpleNamespace(
                    to_json=lambda: {"peer": "x", "tx_rec_seq": 5, "secret": show_secrets}
                )

        with srv.register(Fake(), label="fake", extra={"file": "f"}) as h:
            [ans] = discover(ctl, show_secrets=True)
            assert ans.data is not None
            [c] = ans.data["connections"]
            assert (c["id"], c["label"], c["file"], c["secret"]) == (h.id, "fake", "f", True)
            assert ans.data["argv"] == ["test"] and ans.data["pid"] == os.getpid()
        assert query(ctl)["connections"] == []
        assert query(ctl, {"op": "ping"})["pid"] == os.getpid()
        with pytest.raises(ControlSocketError, match="unknown op"):
            query(ctl, {"op": "nope"})
        # A second server on a live socket is refused, not stolen.
        with pytest.raises(ControlSocketError, match="in use"):
            ControlServer.start(ctl)
    finally:
        srv.stop()
    assert not ctl.exists()


FORKS = r"""
import os, sys, time
from types import SimpleNamespace
from tlsctl.control import ControlServer, Registrar

class Conn:
    def __init__(self, n):
        self.n = n
    def state(self, show_secrets=False):
        return SimpleNamespace(to_json=lambda: {"peer": f"peer{self.n}", "tx_rec_seq": self.n})

def establish(registrar: Registrar, conn):  # what serve's connection code does with it
    return registrar.register(conn, label="handed-over", extra={})

ctl = ControlServer.start(sys.argv[1])
ctl.register(Conn(1), label="parent")
parent = os.getpid()
pid = os.fork()
if pid == 0:  # a serve --workers worker: registers on the inherited server
    ctl.register(Conn(2), label="worker")
    establish(ctl, Conn(3))
    print("child", os.getpid(), flush=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(sys.argv[2]):
        if os.getppid() != parent or time.monotonic() > deadline:
            os._exit(1)
        time.sleep(0.05)
    ctl.stop()
    os._exit(0)
print("parent", os.getpid(), flush=True)
os.waitpid(pid, 0)
time.sleep(30)
"""


def test_forked_workers_get_their_own_socket(tmp_path: Path, env: dict[str, str]) -> None:
    d = tmp_path / "ctl"
    d.mkdir(mode=0o700)
    done = tmp_path / "done"
    proc = subprocess.Popen(
        [sys.executable, "-c", FORKS, str(d), str(done)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: dict[str, int] = {}
    try:
        for line in _readlines(proc, 2, 15):
            role, pid = line.split()
            pids[role] = int(pid)
        doc = inspect_json("--control-socket", str(d), env=env)
        got = {p["pid"]: sorted(c["label"] for c in p["connections"]) for p in doc["processes"]}
        assert got == {pids["parent"]: ["parent"], pids["child"]: ["handed-over", "worker"]}
        # The worker's stop() removes its own socket and leaves the parent's alone.
        done.touch()
        deadline = time.monotonic() + 5
        while (d / f"{pids['child']}.sock").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert (d / f"{pids['parent']}.sock").exists()
        assert [
            p["pid"] for p in inspect_json("--control-socket", str(d), env=env)["processes"]
        ] == [pids["parent"]]
    finally:
        _kill(proc)
        if "child" in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids["child"], signal.SIGKILL)


def _unsafe_dirs(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    yield "mode 0777", loose
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    yield f"owned by uid {NOBODY}", theirs


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chown to another uid")
def test_unsafe_directories_refused(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    for why, d in _unsafe_dirs(tmp_path):
        # An explicit path in such a directory: refused, one clear line.
        with pytest.raises(ControlSocketError, match=why.split()[0]):
            ControlServer.start(d / "x.sock")
        assert not (d / "x.sock").exists()
        # The same directory as the default ($XDG_RUNTIME_DIR/tlsctl).
        xdg = tmp_path / f"xdg-{d.name}"
        xdg.mkdir()
        d.rename(xdg / "tlsctl")
        old = os.environ.get("XDG_RUNTIME_DIR")
        os.environ["XDG_RUNTIME_DIR"] = str(xdg)
        try:
            with pytest.raises(ControlSocketError, match=why):
                ControlServer.start(None, strict=True)
            srv = ControlServer.start(None)  # serve/send keep working, with a warning
            assert not srv.enabled and srv.register(object(), label="x").id == 0  # type: ignore[arg-type]
            srv.stop()
            assert "control socket disabled" in capsys.readouterr().err
        finally:
            if old is None:
                del os.environ["XDG_RUNTIME_DIR"]
            else:
                os.environ["XDG_RUNTIME_DIR"] = old
        assert list((xdg / "tlsctl").iterdir()) == []
        # The reader refuses to look there too.
        r = tlsctl("inspect-context", env={**env, "XDG_RUNTIME_DIR": str(xdg)})
        assert r.returncode == 1, r.stdout
        assert "refusing control socket directory" in r.stderr and why in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


AS_NOBODY = r"""
import json, os, socket, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print(json.dumps({"connect": "EACCES"})); sys.exit(0)
s.sendall(b'{"op": "list", "show_secrets": true}\n')
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.decode().strip() or json.dumps({"closed": True}))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a process as another uid")
def test_other_user_refused(tmp_path: Path, env: dict[str, str]) -> None:
    d = Path(tempfile.mkdtemp(prefix="tlsctl-ctl-"))  # outside pytest's 0700 tree
    ctl = d / "ctl.sock"
    srv = ControlServer.start(ctl)

    def as_nobody() -> dict[str, Any]:
        r = subprocess.run(
            [sys.executable, "-c", AS_NOBODY, str(ctl)], capture_output=True, text=True, timeout=15
        )
        assert r.returncode == 0, r.stderr
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    try:
        info = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_256)

        class Conn:
            def state(self, show_secrets: bool = False) -> SimpleNamespace:
                key = info.key.hex() if show_secrets else "redacted"
                return SimpleNamespace(to_json=lambda: {"tx_crypto": {"key": key}})

        srv.register(Conn(), label="secret")
        # The file system keeps them out (0700 directory, 0600 socket) ...
        assert as_nobody() == {"connect": "EACCES"}
        # ... and with the permissions opened up, SO_PEERCRED still does.
        os.chmod(d, 0o755)
        os.chmod(ctl, 0o666)
        reply = as_nobody()
        assert "permission denied" in reply["error"] and f"uid {NOBODY}" in reply["error"]
        assert info.key.hex() not in json.dumps(reply) and "connections" not in reply
        # The owner still gets an answer, secrets included when asked.
        assert (
            query(ctl, {"op": "list", "show_secrets": True})["connections"][0]["tx_crypto"]["key"]
            == info.key.hex()
        )
    finally:
        srv.stop()
        with contextlib.suppress(OSError):
            os.rmdir(d)

    # The other way round: a socket served by another uid is not believed.
    theirs = Path(tempfile.mkdtemp(prefix="tlsctl-theirs-"))
    os.chmod(theirs, 0o755)
    sock = theirs / "x.sock"
    server = (
        "import os, socket, sys, time\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o666)\n"
        "s.listen(); print('up', flush=True)\n"
        "c, _ = s.accept(); c.recv(100)\n"
        'c.sendall(b\'{"pid": 1, "connections": [{"peer": "fake"}]}\\n\'); time.sleep(1)\n'
    )
    os.chmod(theirs, 0o777)
    proc = subprocess.Popen(
        [sys.executable, "-c", server, str(sock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert _readlines(proc, 1, 10) == ["up"]
        os.chmod(theirs, 0o755)
        os.chown(theirs, 0, 0)
        r = tlsctl("inspect-context", "--json", "--control-socket", str(sock), env=env)
        assert r.returncode == 1 and r.stdout == ""  # the one socket asked for: an error
        assert f"served by uid {NOBODY}" in r.stderr and len(r.stderr.splitlines()) == 1
    finally:
        _kill(proc)
        with contextlib.suppress(OSError):
            sock.unlink()
        with contextlib.suppress(OSError):
            os.rmdir(theirs)


# inspect-context run as nobody: everything it imports is loaded first (the
# interpreter may live where nobody cannot read), then the uid is dropped.
INSPECT_AS_NOBODY = r"""
import importlib.metadata, json, os, sys
import rich.console, rich.table, encodings.idna
import tlsctl.cli, tlsctl.commands.inspect_context
os.setgroups([]); os.setgid(65534); os.setuid(65534)
sys.exit(tlsctl.cli.main(sys.argv[1:]))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a process as another uid")
def test_unreadable_control_socket_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    """A socket (or directory) of another user: one line, exit 1, no traceback,
    whether named with --control-socket or found in the default directory."""
    d = Path(tempfile.mkdtemp(prefix="tlsctl-ctl-"))  # root's, 0700
    ctl = d / "tlsctl" / "123.sock"
    ctl.parent.mkdir(mode=0o700)
    srv = ControlServer.start(ctl)

    def as_nobody(*args: str, xdg: Path = d) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", INSPECT_AS_NOBODY, "inspect-context", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**env, "XDG_RUNTIME_DIR": str(xdg)},
        )

    try:
        for args, where in [
            (("--control-socket", str(ctl)), ctl),  # the path is closed
            (("--control-socket", str(ctl.parent)), ctl.parent),
            ((), ctl.parent),
        ]:  # the default directory is closed
            r = as_nobody(*args)
            assert r.returncode == 1 and r.stdout == "", r.stderr
            assert r.stderr.strip() == f"Error: cannot read {where}: Permission denied"
        # The directories opened, the socket still 0600: connect() is refused.
        os.chmod(d, 0o755)
        os.chmod(ctl.parent, 0o755)
        r = as_nobody("--control-socket", str(ctl))
        assert r.returncode == 1 and r.stdout == "", r.stderr
        assert r.stderr.strip() == f"Error: {ctl}: Permission denied"
        assert ctl.exists()  # somebody else's live socket is never removed
    finally:
        srv.stop()
        with contextlib.suppress(OSError):
            ctl.parent.rmdir()
        with contextlib.suppress(OSError):
            d.rmdir()


def _sigint_default() -> None:
    # A shell's background job starts with SIGINT ignored, and Python keeps
    # it that way; Ctrl-C at a terminal is what is being modelled here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _watch_until(
    args: list[str], env: dict[str, str], marker: bytes, count: int
) -> tuple[int, str, str]:
    """Run ``inspect-context ARGS`` until ``marker`` was printed ``count`` times,
    then Ctrl-C it: (exit status, stdout, stderr)."""
    proc = subprocess.Popen(
        [TLSCTL, "inspect-context", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_sigint_default,
    )
    assert proc.stdout is not None
    buf = b""
    try:
        deadline = time.monotonic() + 20
        while buf.count(marker) < count and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.2)[0]:
                if not (chunk := os.read(proc.stdout.fileno(), 65536)):
                    break
                buf += chunk
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=10)
    finally:
        _kill(proc)
    return proc.returncode, (buf + rest).decode(), err.decode()


def test_watch_exits_cleanly_on_ctrl_c(tmp_path: Path, env: dict[str, str]) -> None:
    with child(tmp_path, None, env) as ch:
        # Piped: one plain block per refresh.
        rc, out, err = _watch_until(["--watch", "0.2"], env, b"--- ", 3)  # 2 whole blocks
        assert rc == 0, err
        assert out.count("--- ") >= 2 and out.count(f"pid {ch.pid}") >= 2
        assert "Traceback" not in err and "Aborted" not in err

        # On a terminal: rich.Live tables, and Ctrl-C still exits 0.
        master, slave = pty.openpty()
        tproc = subprocess.Popen(
            [TLSCTL, "inspect-context", "--watch", "0.2"],
            env={**env, "TERM": "xterm"},
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_sigint_default,
        )
        os.close(slave)
        screen = b""
        try:
            deadline = time.monotonic() + 15
            while b"TX rec_seq" not in screen and time.monotonic() < deadline:
                if select.select([master], [], [], 0.2)[0]:
                    screen += os.read(master, 65536)
            time.sleep(0.5)
            os.killpg(tproc.pid, signal.SIGINT)
            tproc.wait(timeout=10)
            with contextlib.suppress(OSError):
                while select.select([master], [], [], 0.2)[0]:
                    if not (chunk := os.read(master, 65536)):
                        break
                    screen += chunk
        finally:
            _kill(tproc)
            os.close(master)
        text = screen.decode(errors="replace")
        assert tproc.returncode == 0, text[-2000:]
        assert "TX rec_seq" in text and f"pid {ch.pid}" in text and "AES_GCM_128" in text
        assert "Traceback" not in text

        # --json --watch: one JSON document per line.
        rc, out, err = _watch_until(["--json", "--watch", "0.2"], env, b"\n", 3)
        assert rc == 0, err
        docs = [json.loads(line) for line in out.splitlines(keepends=True) if line.endswith("\n")]
        assert len(docs) >= 3
        seqs = [by_pair(d["processes"][0])["A", "client"]["tx_rec_seq"] for d in docs]
        assert seqs == sorted(seqs) and seqs[-1] > seqs[0]


@pytest.mark.parametrize(
    ("version", "cipher", "seq"),
    [
        (TLS_1_2_VERSION, CipherType.CHACHA20_POLY1305, (1 << 40) + 5),
        (TLS_1_3_VERSION, CipherType.AES_GCM_128, 1),
    ],
)
def test_decode(tmp_path: Path, version: int, cipher: CipherType, seq: int) -> None:
    info = random_info(version, cipher, seq=seq)
    blob = info.pack()
    r = tlsctl("inspect-context", "--decode", blob.hex(), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d == {
        "struct_size": len(blob),
        "version": "1.2" if version == TLS_1_2_VERSION else "1.3",
        "version_code": version,
        "cipher": cipher.name,
        "cipher_type": int(cipher),
        "iv": info.iv.hex(),
        "key": info.key.hex(),
        "salt": info.salt.hex(),
        "rec_seq": seq,
        "rec_seq_hex": seq.to_bytes(8, "big").hex(),
    }
    # A file of raw bytes, and a file of hex text, read the same; plain table piped.
    raw = tmp_path / "blob.bin"
    raw.write_bytes(blob)
    hexfile = tmp_path / "blob.hex"
    hexfile.write_text(blob.hex() + "\n")
    for arg in (str(raw), str(hexfile)):
        r = tlsctl("inspect-context", "--decode", arg)
        assert r.returncode == 0, r.stderr
        assert cipher.name in r.stdout and info.key.hex() in r.stdout
        assert f"{seq} (0x{seq:016x})" in r.stdout


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        ("0403330011", "must be 40 bytes, got 5"),
        ("0503" + "3300" + "00" * 36, "unknown TLS version 0x0305"),
        ("0403" + "6300" + "00" * 36, "unknown cipher type 99"),
        ("04", "shorter than struct tls_crypto_info"),
        ("not-hex-at-all", "neither an existing file nor hex"),
    ],
)
def test_decode_bad_blob(blob: str, message: str) -> None:
    r = tlsctl("inspect-context", "--decode", blob)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


def test_live_serve_and_send_seen_by_inspect_context(env: dict[str, str], tmp_path: Path) -> None:
    """The real commands: ``serve --sink --offload sim-nic`` (RX through the
    NIC) and a slow ``send -`` (stdin fed by the test); inspect-context sees
    both ends, their rec_seq advances, and the server's RX offload counts."""
    srv = subprocess.Popen(
        [
            TLSCTL,
            "serve",
            "--json",
            "-accept",
            "127.0.0.1:0",
            "--sink",
            "-naccept",
            "1",
            "--offload",
            "sim-nic",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    snd: subprocess.Popen[bytes] | None = None
    try:
        port = json.loads(_readlines(srv, 1, 20)[0])["port"]
        snd = subprocess.Popen(
            [
                TLSCTL,
                "send",
                "-",
                "-connect",
                f"127.0.0.1:{port}",
                "-k",
                "--offload",
                "sim-nic",
                "-quiet",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        assert snd.stdin is not None

        def snapshot() -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + 20
            while len(found) < 2 and time.monotonic() < deadline:
                doc = inspect_json(env=env)
                for proc in doc["processes"]:
                    for c in proc["connections"]:
                        found[c["label"]] = c
                if len(found) < 2:
                    time.sleep(0.1)
            assert set(found) == {"client", "server"}, found
            return found

        for _ in range(4):
            snd.stdin.write(os.urandom(100_000))
            snd.stdin.flush()
        time.sleep(0.5)
        first = snapshot()
        for _ in range(8):
            snd.stdin.write(os.urandom(100_000))
            snd.stdin.flush()
        time.sleep(0.5)
        second = snapshot()
        client1, client2 = first["client"], second["client"]
        assert client2["tx_rec_seq"] > client1["tx_rec_seq"]
        assert second["server"]["rx_rec_seq"] > first["server"]["rx_rec_seq"]
        assert client2["tx_conf"] == "device" and client2["device"]["driver"] == "sim-nic"
        moved = client2["device"]["stats"]["tx_tls_encrypted_bytes"]
        assert moved > client1["device"]["stats"]["tx_tls_encrypted_bytes"]
        assert client2["tx_crypto"]["key"] == "redacted"
        assert second["server"]["rx_crypto_info"] == "redacted"
        rx1, rx2 = first["server"]["rx_offload"], second["server"]["rx_offload"]
        assert second["server"]["rx_conf"] == "device"
        assert rx2["rx_resync"] == "DRIVER_REQ"
        assert rx2["rx_records_device"] > rx1["rx_records_device"] > 0
        text = tlsctl("inspect-context", env=env)
        assert text.returncode == 0, text.stderr
        assert "rx_offload rx_resync DRIVER_REQ" in text.stdout, text.stdout
        snd.stdin.close()
        assert snd.wait(30) == 0, snd.stderr.read() if snd.stderr else ""
        srv.wait(30)
        # Both ended: nothing left to list.
        doc = inspect_json(env=env)
        assert all(not p["connections"] for p in doc["processes"])
    finally:
        for p in (snd, srv):
            if p is not None:
                _kill(p)


@pytest.mark.parametrize(
    "command",
    [("send", "--loopback", "--size", "1K"), ("serve", "-accept", "127.0.0.1:0", "--sink")],
)
def test_unusable_control_socket_stops_send_and_serve(
    tmp_path: Path, env: dict[str, str], command: tuple[str, ...]
) -> None:
    """An explicit --control-socket whose directory others could write to:
    one line, exit 1, before any connection (the library raises, the
    command says it)."""
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    r = tlsctl(*command, "--control-socket", str(loose / "x.sock"), env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (
        f"Error: refusing control socket directory {loose}: "
        "mode 0777 lets others replace the socket (use a 0700 directory)"
    )
    assert r.stdout == "" and list(loose.iterdir()) == []


def test_control_client_lists_fetches_and_watches(tmp_path: Path) -> None:
    """The library client inspect-context is built on: processes, the state
    document with summed counters, a watch that sees the state move, and a
    scanned socket that does not answer reported through ``warn``."""
    import socket

    from tlsctl.control import ControlClient

    d = tmp_path / "ctl"
    d.mkdir(mode=0o700)
    srv = ControlServer.start(d, argv=["test"])
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # listens, never answers
    mute.bind(str(d / "1.sock"))
    mute.listen(16)

    class Conn:
        def __init__(self) -> None:
            self.seq = 0

        def state(self, show_secrets: bool = False) -> SimpleNamespace:
            self.seq += 1
            doc = {
                "tx_rec_seq": self.seq,
                "stats": {"TlsTxSw": 1},
                "device": {"stats": {"tx_tls_ooo": 2}},
            }
            return SimpleNamespace(to_json=lambda: doc)

    try:
        with srv.register(Conn(), label="c", extra={"file": "f"}):
            warnings: list[str] = []
            client = ControlClient(d, timeout=0.3, warn=warnings.append)
            [p] = client.processes()
            assert p["pid"] == os.getpid() and p["control_socket"] == str(srv.path)
            assert [(c["label"], c["file"]) for c in p["connections"]] == [("c", "f")]
            assert warnings == [f"{d / '1.sock'}: no answer within 0.3s (process busy or stopped)"]
            fake = tmp_path / "tls_stat"
            fake.write_text("TlsTxSw 7\n")
            doc = client.state(os.getpid(), stats=True, proc_tls_stat=str(fake))
            assert doc["stats"]["processes"] == 1
            assert doc["stats"]["device"] == {"tx_tls_ooo": 2}
            assert doc["stats"]["proc_net_tls_stat"]["TlsTxSw"] == 7
            looks = client.watch(0.01, os.getpid())
            first, second = next(looks), next(looks)
            seqs = [x["processes"][0]["connections"][0]["tx_rec_seq"] for x in (first, second)]
            assert seqs[1] > seqs[0]
            # One socket file named: its problem is an error, not a warning.
            with pytest.raises(ControlSocketError, match="no answer within"):
                ControlClient(d / "1.sock", timeout=0.3).processes()
    finally:
        mute.close()
        srv.stop()
