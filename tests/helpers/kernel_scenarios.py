"""Scenarios that run inside a VM with the real Linux kTLS (the test oracle).

Each scenario is a plain function with no arguments, registered with
``@scenario("name")``; it raises (usually AssertionError) on failure and may
return a string that is kept as the scenario's detail (observed facts).

``main()`` runs every registered scenario, each in a forked child with its
own time limit, and writes JSON to OUTFILE::

    {"_meta": {"ok": ..., "detail": ..., "kernel": ..., "modprobe_tls": ...},
     "<scenario name>": {"ok": bool, "detail": str}, ...}

Usage (inside the VM, from the repository root; tests/offload/test_kernel_vm.py
does this for you)::

    python -m tests.helpers.kernel_scenarios OUTFILE [NAME ...]

The scenarios below use only the kernel and Python's ``socket`` module, and
pin down the kernel facts (6.1, Debian ``linux-image-amd64``) that the
``offload`` package mirrors.  Where the kernel disagrees with a written
description, the assertion follows the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import finished_fragments as _fragments
from tests.helpers import kernel_cli_scenarios as _cli
from tests.helpers import kernel_edge_scenarios as _edges
from tests.helpers import kernel_layer_scenarios as _layer
from tests.helpers import kernel_payload_scenarios as _payload

# ---------------------------------------------------------------------------
# Registry

DEFAULT_TIMEOUT = 30.0
META_KEY = "_meta"


@dataclass(frozen=True)
class Scenario:
    name: str
    func: Callable[[], object]
    timeout: float


REGISTRY: dict[str, Scenario] = {}


def scenario(
    name: str, *, timeout: float = DEFAULT_TIMEOUT
) -> Callable[[Callable[[], object]], Callable[[], object]]:
    """Register ``func`` as the scenario ``name`` (unique; must not start with '_')."""

    def register(func: Callable[[], object]) -> Callable[[], object]:
        if name.startswith("_"):
            raise ValueError(f"scenario names must not start with '_': {name!r}")
        if name in REGISTRY and REGISTRY[name].func is not func:
            raise ValueError(f"duplicate scenario name {name!r}")
        REGISTRY[name] = Scenario(name, func, timeout)
        return func

    return register


def scenario_names() -> list[str]:
    return sorted(REGISTRY)


def total_timeout() -> float:
    """Upper bound for running every registered scenario (for the host's VM timeout)."""
    return sum(s.timeout for s in REGISTRY.values()) + 30.0


# ---------------------------------------------------------------------------
# Kernel constants (include/uapi/linux/tls.h, include/uapi/linux/tcp.h)

SOL_TCP = 6
TCP_ULP = 31
SOL_TLS = 282
TLS_TX = 1
TLS_RX = 2
TLS_TX_ZEROCOPY_RO = 3
TLS_RX_EXPECT_NO_PAD = 4
TLS_SET_RECORD_TYPE = 1
TLS_GET_RECORD_TYPE = 2
TLS_1_2_VERSION = 0x0303
TLS_1_3_VERSION = 0x0304
TLS_CIPHER_AES_GCM_128 = 51
TLS_CIPHER_AES_GCM_256 = 52

GCM128_STRUCT = struct.Struct("=HH8s16s4s8s")  # version, cipher, iv, key, salt, rec_seq
assert GCM128_STRUCT.size == 40

CT_ALERT = 21
CT_HANDSHAKE = 22
CT_APPLICATION_DATA = 23

# Fixed test key material (the values don't matter to the kernel).
IV = bytes.fromhex("0102030405060708")
KEY = bytes(range(16))
SALT = b"SALT"
REC_SEQ = (5).to_bytes(8, "big")


def gcm128_info(
    *,
    version: int = TLS_1_2_VERSION,
    cipher: int = TLS_CIPHER_AES_GCM_128,
    iv: bytes = IV,
    key: bytes = KEY,
    salt: bytes = SALT,
    rec_seq: bytes = REC_SEQ,
) -> bytes:
    """struct tls12_crypto_info_aes_gcm_128, native-endian u16s, 40 bytes."""
    return GCM128_STRUCT.pack(version, cipher, iv, key, salt, rec_seq)


def be_add(value: bytes, n: int) -> bytes:
    return ((int.from_bytes(value, "big") + n) % (1 << (8 * len(value)))).to_bytes(
        len(value), "big"
    )


# ---------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def tcp_pair(timeout: float = 10.0) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair (client, server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=timeout)
        server, _ = listener.accept()
    server.settimeout(timeout)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def expect_errno(expected: int, func: Callable[..., object], *args: object) -> None:
    """Call func(*args) and assert it fails with OSError(expected)."""
    try:
        result = func(*args)
    except OSError as exc:
        if exc.errno != expected:
            raise AssertionError(
                f"{_call_repr(func, args)}: expected {errno.errorcode[expected]}, "
                f"got {errno.errorcode.get(exc.errno or 0, exc.errno)} ({exc})"
            ) from exc
        return
    raise AssertionError(
        f"{_call_repr(func, args)}: expected {errno.errorcode[expected]}, succeeded with {result!r}"
    )


def _call_repr(func: Callable[..., object], args: tuple[object, ...]) -> str:
    shown = ", ".join(
        repr(a) if not isinstance(a, bytes) or len(a) < 12 else "<bytes>" for a in args
    )
    return f"{getattr(func, '__name__', func)}({shown})"


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def install_ulp(*socks: socket.socket) -> None:
    for s in socks:
        s.setsockopt(SOL_TCP, TCP_ULP, b"tls")


def tls_stat() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path("/proc/net/tls_stat").read_text().splitlines():
        name, _, value = line.partition("\t")
        if name.strip():
            out[name.strip()] = int(value.strip())
    return out


# ---------------------------------------------------------------------------
# Scenarios


@scenario("ulp_enotconn_then_eexist")
def ulp_enotconn_then_eexist() -> str:
    # Not connected (fresh socket) and listening sockets: ENOTCONN.
    with socket.socket() as unconnected:
        expect_errno(errno.ENOTCONN, unconnected.setsockopt, SOL_TCP, TCP_ULP, b"tls")
        # No ULP: getsockopt(TCP_ULP) returns an empty string.
        assert unconnected.getsockopt(SOL_TCP, TCP_ULP, 16) == b""
        # An unknown ULP name: ENOENT (no such module), checked before the state.
        expect_errno(errno.ENOENT, unconnected.setsockopt, SOL_TCP, TCP_ULP, b"bogus")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        expect_errno(errno.ENOTCONN, listener.setsockopt, SOL_TCP, TCP_ULP, b"tls")
    with tcp_pair() as (client, _server):
        client.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        # The name comes back padded with NULs to the buffer (max 16).
        assert client.getsockopt(SOL_TCP, TCP_ULP, 16) == b"tls" + b"\0" * 13
        assert client.getsockopt(SOL_TCP, TCP_ULP, 2) == b"tl"
        expect_errno(errno.EEXIST, client.setsockopt, SOL_TCP, TCP_ULP, b"tls")
    return "unconnected/listening: ENOTCONN; unknown name: ENOENT; second time: EEXIST"


@scenario("sol_tls_without_ulp")
def sol_tls_without_ulp() -> str:
    with tcp_pair() as (client, _server):
        # SOL_TLS on a plain TCP socket falls through to the IP layer.
        expect_errno(errno.ENOPROTOOPT, client.setsockopt, SOL_TLS, TLS_TX, gcm128_info())
        expect_errno(errno.EOPNOTSUPP, client.getsockopt, SOL_TLS, TLS_TX, 40)
    return "setsockopt: ENOPROTOOPT; getsockopt: EOPNOTSUPP"


@scenario("tls12_gcm128_ktls_hello")
def tls12_gcm128_ktls_hello() -> str:
    with tcp_pair() as (client, server):
        install_ulp(client, server)
        client.setsockopt(SOL_TLS, TLS_TX, gcm128_info())
        server.setsockopt(SOL_TLS, TLS_RX, gcm128_info())
        assert client.send(b"hello") == 5
        assert recv_exact(server, 5) == b"hello"
        # With room for a cmsg the record type comes back as TLS_GET_RECORD_TYPE.
        client.send(b"world")
        data, anc, flags, _ = server.recvmsg(100, socket.CMSG_SPACE(1))
        assert data == b"world", data
        assert anc == [(SOL_TLS, TLS_GET_RECORD_TYPE, bytes([CT_APPLICATION_DATA]))], anc
        assert flags & socket.MSG_EOR, flags
    return "kTLS TX -> kTLS RX delivers b'hello'; recvmsg cmsg (282, 2, b'\\x17'), MSG_EOR set"


@scenario("tls12_gcm128_wire_format")
def tls12_gcm128_wire_format() -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    with tcp_pair() as (client, raw_server):
        client.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        client.setsockopt(SOL_TLS, TLS_TX, gcm128_info())
        client.send(b"hello")
        client.send(b"again")
        records = [recv_exact(raw_server, 5 + 8 + 5 + 16) for _ in range(2)]
    aead = AESGCM(KEY)
    seq = int.from_bytes(REC_SEQ, "big")
    for i, record in enumerate(records):
        header, explicit, body = record[:5], record[5:13], record[13:]
        assert header == bytes([CT_APPLICATION_DATA, 3, 3, 0, 8 + 5 + 16]), header.hex()
        # The explicit nonce is crypto_info.iv, incremented per record (not the seq).
        assert explicit == be_add(IV, i), explicit.hex()
        aad = (
            (seq + i).to_bytes(8, "big")
            + bytes([CT_APPLICATION_DATA, 3, 3])
            + (5).to_bytes(2, "big")
        )
        plain = aead.decrypt(SALT + explicit, body, aad)
        assert plain == (b"hello", b"again")[i], plain
    return (
        "record = 17 03 03 00 1d || explicit_nonce(8)=iv+n || ct(5) || tag(16) = 34 bytes; "
        "nonce = salt || explicit; AAD = (rec_seq+n)(8) || 17 || 03 03 || 00 05"
    )


@scenario("tls12_getsockopt_state")
def tls12_getsockopt_state() -> str:
    with tcp_pair() as (client, server):
        install_ulp(client, server)
        # Before the direction is set: EBUSY -- but len < 4 is EINVAL first, and the
        # length is otherwise not checked until the state is known.
        for n in (4, 8, 39, 40, 41, 56, 100):
            expect_errno(errno.EBUSY, client.getsockopt, SOL_TLS, TLS_TX, n)
        for n in (2, 3):
            expect_errno(errno.EINVAL, client.getsockopt, SOL_TLS, TLS_TX, n)
        expect_errno(errno.EBUSY, server.getsockopt, SOL_TLS, TLS_RX, 40)

        info = gcm128_info()
        client.setsockopt(SOL_TLS, TLS_TX, info)
        assert client.getsockopt(SOL_TLS, TLS_TX, 40) == info
        for i in range(3):
            client.send(b"rec%d" % i)
        got = GCM128_STRUCT.unpack(client.getsockopt(SOL_TLS, TLS_TX, 40))
        want = (
            TLS_1_2_VERSION,
            TLS_CIPHER_AES_GCM_128,
            be_add(IV, 3),
            KEY,
            SALT,
            be_add(REC_SEQ, 3),
        )
        assert got == want, (got, want)
        # len 4: only version + cipher.
        assert client.getsockopt(SOL_TLS, TLS_TX, 4) == struct.pack(
            "=HH", TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_128
        )
        for n in (2, 3, 8, 39, 41, 56, 100):
            expect_errno(errno.EINVAL, client.getsockopt, SOL_TLS, TLS_TX, n)
        # RX still unset on the client.
        expect_errno(errno.EBUSY, client.getsockopt, SOL_TLS, TLS_RX, 40)

        # The RX side reports its live state too: iv and rec_seq advance per record read.
        # The three records above are already queued (unread) on the server when TLS_RX
        # is set: the kernel decrypts them as well.
        server.setsockopt(SOL_TLS, TLS_RX, info)
        assert server.getsockopt(SOL_TLS, TLS_RX, 40) == info
        for i in range(3):
            client.send(b"msg%d" % i)
        got_data = recv_exact(server, 24)
        assert got_data == b"rec0rec1rec2msg0msg1msg2", got_data
        got = GCM128_STRUCT.unpack(server.getsockopt(SOL_TLS, TLS_RX, 40))
        want = (
            TLS_1_2_VERSION,
            TLS_CIPHER_AES_GCM_128,
            be_add(IV, 6),
            KEY,
            SALT,
            be_add(REC_SEQ, 6),
        )
        assert got == want, (got, want)

        # The other SOL_TLS options.
        assert client.getsockopt(SOL_TLS, TLS_TX_ZEROCOPY_RO, 4) == b"\0\0\0\0"
        expect_errno(errno.EINVAL, client.getsockopt, SOL_TLS, TLS_RX_EXPECT_NO_PAD, 4)  # 1.2
        expect_errno(errno.ENOPROTOOPT, client.getsockopt, SOL_TLS, 99, 4)
    return (
        "before set: len<4 EINVAL, else EBUSY; after set: len 40 full struct with live iv/rec_seq "
        "(both +1 per record, TX and RX; records queued before TLS_RX are decrypted), "
        "len 4 version+cipher, other lengths EINVAL; "
        "TLS_TX_ZEROCOPY_RO reads 0; TLS_RX_EXPECT_NO_PAD on 1.2: EINVAL; unknown optname: "
        "ENOPROTOOPT"
    )


@scenario("tls12_setsockopt_errors")
def tls12_setsockopt_errors() -> str:
    info = gcm128_info()
    with tcp_pair() as (client, server):
        install_ulp(client, server)
        expect_errno(errno.EINVAL, client.setsockopt, SOL_TLS, TLS_TX, info[:3])
        expect_errno(errno.EINVAL, client.setsockopt, SOL_TLS, TLS_TX, info[:39])
        expect_errno(errno.EINVAL, client.setsockopt, SOL_TLS, TLS_TX, info + b"\0")
        expect_errno(errno.EINVAL, client.setsockopt, SOL_TLS, TLS_TX, gcm128_info(version=0x0302))
        expect_errno(errno.EINVAL, client.setsockopt, SOL_TLS, TLS_TX, gcm128_info(cipher=50))
        # Failed attempts leave the direction unset.
        expect_errno(errno.EBUSY, client.getsockopt, SOL_TLS, TLS_TX, 40)
        client.setsockopt(SOL_TLS, TLS_TX, info)
        expect_errno(errno.EBUSY, client.setsockopt, SOL_TLS, TLS_TX, info)  # TLS 1.2: no rekey
        # RX with a different cipher than TX: EINVAL.
        gcm256 = struct.pack(
            "=HH8s32s4s8s", TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_256, IV, KEY * 2, SALT, REC_SEQ
        )
        expect_errno(errno.EINVAL, client.setsockopt, SOL_TLS, TLS_RX, gcm256)
        client.setsockopt(SOL_TLS, TLS_RX, info)
        expect_errno(errno.EBUSY, client.setsockopt, SOL_TLS, TLS_RX, info)
    return "bad len/version/cipher: EINVAL; again: EBUSY; RX cipher != TX cipher: EINVAL"


@scenario("tls12_rx_record_boundaries")
def tls12_rx_record_boundaries() -> str:
    with tcp_pair() as (client, server):
        install_ulp(client, server)
        client.setsockopt(SOL_TLS, TLS_TX, gcm128_info())
        server.setsockopt(SOL_TLS, TLS_RX, gcm128_info())
        for i in range(3):
            client.send(b"hello%d" % i)
        time.sleep(0.3)  # let all three records arrive
        # Data records of the same type are merged into one recv().
        first = server.recv(100)
        assert first == b"hello0hello1hello2", first
        # A short read leaves the rest of the record for the next call.
        client.send(b"abcdefgh")
        time.sleep(0.2)
        assert server.recv(3) == b"abc"
        assert server.recv(100) == b"defgh"
        # More than 2^14 bytes in one send: split into full records.
        client.send(b"x" * 20000)
        got = recv_exact(server, 20000)
        assert got == b"x" * 20000
        state = GCM128_STRUCT.unpack(client.getsockopt(SOL_TLS, TLS_TX, 40))
        assert state[5] == be_add(REC_SEQ, 3 + 1 + 2), state  # 20000 = 16384 + 3616
    return (
        "recv merges consecutive data records; partial reads keep the remainder; "
        "a 20000-byte send makes 2 records"
    )


@scenario("tls12_control_record_type")
def tls12_control_record_type() -> str:
    cmsg = [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes([CT_HANDSHAKE]))]
    with tcp_pair() as (client, server):
        install_ulp(client, server)
        client.setsockopt(SOL_TLS, TLS_TX, gcm128_info())
        server.setsockopt(SOL_TLS, TLS_RX, gcm128_info())
        client.send(b"data1")
        assert client.sendmsg([b"hsmsg"], cmsg) == 5
        client.send(b"data2")
        # MSG_MORE together with a record type: EINVAL.
        expect_errno(errno.EINVAL, client.sendmsg, [b"x"], cmsg, socket.MSG_MORE)
        time.sleep(0.3)
        data, anc, _, _ = server.recvmsg(100, socket.CMSG_SPACE(1))
        assert (data, anc) == (b"data1", [(SOL_TLS, TLS_GET_RECORD_TYPE, b"\x17")]), (data, anc)
        # A control record without a cmsg buffer: EIO (the record stays queued).
        expect_errno(errno.EIO, server.recv, 100)
        data, anc, _, _ = server.recvmsg(100, socket.CMSG_SPACE(1))
        assert (data, anc) == (b"hsmsg", [(SOL_TLS, TLS_GET_RECORD_TYPE, b"\x16")]), (data, anc)
        assert server.recv(100) == b"data2"
    return (
        "cmsg TLS_SET_RECORD_TYPE sends a separate record; recv never mixes types; control "
        "record with no cmsg room: EIO; MSG_MORE with record type: EINVAL"
    )


@scenario("proc_tls_stat")
def proc_tls_stat() -> str:
    before = tls_stat()
    names_61 = [
        "TlsCurrTxSw", "TlsCurrRxSw", "TlsCurrTxDevice", "TlsCurrRxDevice",
        "TlsTxSw", "TlsRxSw", "TlsTxDevice", "TlsRxDevice",
        "TlsDecryptError", "TlsRxDeviceResync", "TlsDecryptRetry", "TlsRxNoPadViolation",
    ]  # fmt: skip
    assert list(before)[: len(names_61)] == names_61, list(before)
    with tcp_pair() as (client, server):
        install_ulp(client, server)
        client.setsockopt(SOL_TLS, TLS_TX, gcm128_info())
        server.setsockopt(SOL_TLS, TLS_RX, gcm128_info())
        during = tls_stat()
    after = tls_stat()
    assert during["TlsTxSw"] == before["TlsTxSw"] + 1
    assert during["TlsRxSw"] == before["TlsRxSw"] + 1
    assert during["TlsCurrTxSw"] == before["TlsCurrTxSw"] + 1
    assert during["TlsCurrRxSw"] == before["TlsCurrRxSw"] + 1
    assert after["TlsCurrTxSw"] == before["TlsCurrTxSw"]  # closing decrements Curr*
    assert after["TlsTxSw"] == during["TlsTxSw"]
    return f"/proc/net/tls_stat counters: {', '.join(before)}"


# ---------------------------------------------------------------------------
# Runner


# ---------------------------------------------------------------------------
# The offload layer next to the kernel (interop + the kernel as oracle).

_layer.register(scenario)

# The TLS handshake's handoff to the kernel (a peer's Finished in 16 records).
_fragments.register(scenario)

# Issue 16: the edges where the layer was held against Linux 7.x.
_edges.register(scenario)

# Linux 6.19+: TLS_TX_MAX_PAYLOAD_LEN.
_payload.register(scenario)

# The CLI on the real kernel: send/serve --offload kernel, hashes checked.
_cli.register(scenario)


def _run_child(sc: Scenario) -> dict[str, object]:
    try:
        ret = sc.func()
        return {"ok": True, "detail": "" if ret is None else str(ret)}
    except _edges.ScenarioSkipped as exc:
        return {"ok": True, "skipped": str(exc), "detail": f"skipped: {exc}"}
    except BaseException:
        return {"ok": False, "detail": traceback.format_exc()}


def run_scenario(sc: Scenario) -> dict[str, object]:
    """Run one scenario in a forked child, killed after sc.timeout seconds."""
    t0 = time.monotonic()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        code = 0
        try:
            payload = json.dumps(_run_child(sc)).encode()
            view = memoryview(payload)
            while view:
                view = view[os.write(wfd, view) :]
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(wfd)
    chunks: list[bytes] = []
    deadline = t0 + sc.timeout
    timed_out = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([rfd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    elapsed = time.monotonic() - t0
    if timed_out:
        result: dict[str, object] = {
            "ok": False,
            "detail": f"timed out after {sc.timeout:.0f} s (killed)",
        }
    else:
        try:
            result = json.loads(b"".join(chunks))
        except ValueError:
            result = {"ok": False, "detail": f"scenario process died (wait status {status})"}
    result["seconds"] = round(elapsed, 3)
    return result


def _modprobe_tls() -> tuple[bool, str]:
    try:
        proc = subprocess.run(
            ["modprobe", "tls"], capture_output=True, text=True, timeout=60, check=False
        )
        out = (proc.stdout + proc.stderr).strip()
        ok = proc.returncode == 0
        detail = f"modprobe tls: exit {proc.returncode}" + (f": {out}" if out else "")
    except (OSError, subprocess.SubprocessError) as exc:
        ok, detail = False, f"modprobe tls failed to run: {exc}"
    loaded = os.path.isdir("/sys/module/tls") or os.path.exists("/proc/net/tls_stat")
    return ok and loaded, f"{detail}; tls module loaded: {loaded}"


def _write_json(path: Path, data: dict[str, dict[str, object]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    out = Path(args[0])
    wanted = args[1:] or scenario_names()
    unknown = [n for n in wanted if n not in REGISTRY]
    if unknown:
        print(f"unknown scenarios: {unknown}", file=sys.stderr)
        return 2
    modprobe_ok, modprobe_detail = _modprobe_tls()
    results: dict[str, dict[str, object]] = {
        META_KEY: {
            "ok": modprobe_ok,
            "detail": modprobe_detail,
            "kernel": platform.release(),
            "uname": " ".join(platform.uname()),
            "modprobe_tls": modprobe_ok,
            "python": sys.version.split()[0],
            "in_vm": os.environ.get("TLSCTL_IN_KERNEL_VM") == "1",
            "scenarios": wanted,
        }
    }
    _write_json(out, results)  # partial results survive a crash of the VM
    failed = 0
    for name in wanted:
        res = run_scenario(REGISTRY[name])
        results[name] = res
        failed += not res["ok"]
        tag = "skip" if res.get("skipped") else "ok  " if res["ok"] else "FAIL"
        print(f"{tag} {name} ({res['seconds']} s)", flush=True)
        _write_json(out, results)
    print(f"scenarios: {len(wanted) - failed} ok, {failed} failed", flush=True)
    return 0 if failed == 0 and modprobe_ok else 1


if __name__ == "__main__":
    sys.exit(main())
