"""``--wire netns`` from the command line (issue 13): ``tlsctl send`` and
``tlsctl serve`` on the real wire, as separate processes, with real peers.

``send --offload sim-nic --wire netns`` builds its own wire: it sends from
the host namespace, the kernel's TCP segments and retransmits, the NIC
process encrypts, and the receiver in the peer namespace (``openssl
s_server`` or ``tlsctl serve``, started by ``--exec-peer``) decrypts it all;
hashes compared.  ``serve --wire netns`` listens behind the NIC and curl in
the peer namespace downloads.  ``--pcap`` captures after the NIC and tshark
decrypts the capture with no key log option.

Needs root and /dev/net/tun (this machine and CI have both); without them
the wire tests skip with that reason, and the message itself is tested.
The option errors need neither.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from offload.netwire.netns import unavailable_reason
from offload.uapi import SOL_TCP, SOL_TLS, TCP_ULP, TLS_1_3_VERSION, TLS_RX, TLS_TX, CipherType
from tests.conftest import random_info
from tests.helpers.netwire_helpers import SUITES, s_server_args
from tests.helpers.peers import Pki, make_pki, run_tlsctl, sha, spawn
from tests.helpers.peers import _readline as readline
from tlsctl.cli import main
from tlsctl.offloadmode import (
    DeviceSpec,
    OffloadOptionError,
    device_spec,
    layer_offload,
    nic_path,
    open_layer,
)

pytestmark = pytest.mark.timeout(300)

REASON = unavailable_reason()
needs_wire = pytest.mark.skipif(REASON is not None, reason=REASON or "")
needs_tshark = pytest.mark.skipif(
    shutil.which("tshark") is None or shutil.which("editcap") is None,
    reason="tshark/editcap not installed (Debian: apt-get install tshark)",
)
PEER = "10.213.0.2"
PORT = 4433


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("data")
    out = {}
    for n in (0, 1, 16385, 1 << 20, 3 << 20):
        p = d / f"f{n}.bin"
        p.write_bytes(os.urandom(n))
        out[n] = p
    return out


def _send(src: Path, peer: str, *extra: str, timeout: float = 120) -> dict[str, Any]:
    """``tlsctl send SRC --wire netns --offload sim-nic`` to ``peer``, a
    shell command line run in the peer namespace (--exec-peer); the JSON summary."""
    r = run_tlsctl(
        "send",
        str(src),
        "-connect",
        f"{PEER}:{PORT}",
        "--wire",
        "netns",
        "--offload",
        "sim-nic",
        "-servername",
        "localhost",
        "--json",
        "--exec-peer",
        peer,
        *extra,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr
    summary: dict[str, Any] = json.loads(r.stdout)
    return summary


def _s_server(pki: Pki, version: str, suite: str, out: Path) -> str:
    """``openssl s_server`` writing what it decrypts to ``out`` (a shell line)."""
    return f"{shlex.join(s_server_args(pki, version, suite, PORT))} > {shlex.quote(str(out))}"


def _check_wire_summary(s: dict[str, Any], size: int) -> None:
    """The real wire's part of a summary: CPU apart, counters that add up."""
    assert s["wire"] == "netns" and s["offload"] == "sim-nic"
    assert s["host_cpu_seconds"] >= 0 and s["nic_cpu_seconds"] >= 0
    assert "device_cpu_seconds" not in s  # the NIC's CPU is nic_cpu_seconds, its own process's
    nic, dev = s["nic_counters"], s["device_counters"]
    assert dev["tx_tls_ctx"] == 1 and dev["tx_tls_del"] == 1
    assert dev.get("tx_tls_encrypted_bytes", 0) >= size
    assert nic["frames_out"] == (
        nic.get("frames_offloaded", 0) + nic.get("frames_passed", 0) + nic.get("frames_dropped", 0)
    )
    assert s["netns"]["peer_addr"] == PEER


# -- send -> openssl s_server / tlsctl serve in the peer namespace -----------------------


@needs_wire
@pytest.mark.parametrize(("version", "suite"), SUITES, ids=[f"{v}-{s}" for v, s in SUITES])
def test_send_simnic_netns_to_s_server(
    pki: Pki, data: dict[int, Path], tmp_path: Path, version: str, suite: str
) -> None:
    src = data[3 << 20]
    out = tmp_path / "got"
    flag = "-tls1_3" if version == "1.3" else "-tls1_2"
    s = _send(src, _s_server(pki, version, suite, out), "-CAfile", str(pki.ca), flag)
    assert s["cipher"] == suite and s["peer_status"] == 0
    assert s["sha256"] == sha(src) == sha(out)
    _check_wire_summary(s, src.stat().st_size)


@needs_wire
@pytest.mark.parametrize("size", [0, 1, 16385])
@pytest.mark.parametrize(("version", "suite"), [SUITES[0], SUITES[3]], ids=["1.2", "1.3"])
def test_send_simnic_netns_sizes(
    pki: Pki, data: dict[int, Path], tmp_path: Path, version: str, suite: str, size: int
) -> None:
    src = data[size]
    out = tmp_path / "got"
    s = _send(src, _s_server(pki, version, suite, out), "-CAfile", str(pki.ca))
    assert s["bytes"] == size
    assert s["sha256"] == sha(src) == sha(out)
    _check_wire_summary(s, size)


@needs_wire
@pytest.mark.parametrize(("version", "suite"), [SUITES[2], SUITES[4]], ids=["1.2", "1.3"])
def test_send_simnic_netns_to_tlsctl_serve(
    pki: Pki, data: dict[int, Path], tmp_path: Path, version: str, suite: str
) -> None:
    src = data[3 << 20]
    out = tmp_path / "got"
    serve = [
        sys.executable,
        "-m",
        "tlsctl.cli",
        "serve",
        "-accept",
        f"{PEER}:{PORT}",
        "-naccept",
        "1",
        "-o",
        str(out),
        "-cert",
        str(pki.rsa_cert),
        "-key",
        str(pki.rsa_key),
        "-q",
    ]
    flag, pick = ("-tls1_3", "-ciphersuites") if version == "1.3" else ("-tls1_2", "-cipher")
    s = _send(src, shlex.join(serve), "-CAfile", str(pki.ca), flag, pick, suite)
    assert s["cipher"] == suite and s["peer_status"] == 0
    assert s["sha256"] == sha(src) == sha(out)
    _check_wire_summary(s, src.stat().st_size)


@needs_wire
def test_send_loopback_netns_256mib() -> None:
    """256 MiB: the record ring wraps many times, records freed as TCP
    acknowledges them; the built-in server in the peer namespace hashes it."""
    size = 256 << 20
    r = run_tlsctl(
        "send", "--loopback", "--wire", "netns", "--offload", "sim-nic", "--size", "256M",
        "--json", timeout=280,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["match"] is True and s["bytes"] == size
    assert s["server_sha256"] == s["sha256"]
    _check_wire_summary(s, size)


# -- faults on real frames ----------------------------------------------------------------


@needs_wire
@pytest.mark.parametrize("seed", [1, 2])
def test_send_loopback_netns_under_faults(seed: int) -> None:
    """Drop, reorder and duplicate on real frames both ways: the kernel
    retransmits, the NIC resyncs, every byte arrives (hash equal)."""
    r = run_tlsctl(
        "send", "--loopback", "--wire", "netns", "--offload", "sim-nic", "--size", "4M",
        "--faults", f"drop=0.02,reorder=0.02,dup=0.01,seed={seed}", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["match"] is True and s["server_sha256"] == s["sha256"]
    assert s["faults"] == f"drop=0.02,reorder=0.02,dup=0.01,seed={seed}"
    injected = s["faults_injected"]
    assert sum(injected.values()) > 0
    _check_wire_summary(s, 4 << 20)


@needs_wire
def test_send_netns_under_faults_to_s_server(
    pki: Pki, data: dict[int, Path], tmp_path: Path
) -> None:
    src = data[3 << 20]
    out = tmp_path / "got"
    version, suite = SUITES[3]
    s = _send(
        src, _s_server(pki, version, suite, out), "-CAfile", str(pki.ca),
        "--faults", "drop=0.03,reorder=0.03,dup=0.02,seed=11",
    )  # fmt: skip
    assert s["sha256"] == sha(src) == sha(out)
    assert sum(s["faults_injected"].values()) > 0
    _check_wire_summary(s, src.stat().st_size)


# -- --pcap ---------------------------------------------------------------------------------


def _tshark_follow(pcap: Path) -> list[bytes]:
    """The decrypted application data of the first TLS stream, one bytes
    per direction (tshark reads the secrets from the file itself)."""
    r = subprocess.run(
        ["tshark", "-r", str(pcap), "-q", "-z", "follow,tls,raw,0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [ln for ln in r.stdout.splitlines() if re.fullmatch(r"\t?[0-9a-f]+", ln)]
    return [
        b"".join(bytes.fromhex(ln.strip()) for ln in lines if ln.startswith("\t") == tab)
        for tab in (False, True)
    ]


@needs_wire
@needs_tshark
def test_send_pcap_decrypts_with_tshark(pki: Pki, data: dict[int, Path], tmp_path: Path) -> None:
    """A 1 MiB transfer captured after the NIC: tshark, with no key log
    option, decrypts exactly the file's bytes; the file is private."""
    src = data[1 << 20]
    out = tmp_path / "got"
    pcap = tmp_path / "cap.pcapng"
    version, suite = SUITES[0]
    s = _send(src, _s_server(pki, version, suite, out), "-CAfile", str(pki.ca), "--pcap", str(pcap))
    assert sha(out) == sha(src)
    assert s["pcap"] == str(pcap) and s["pcap_bytes"] == pcap.stat().st_size
    assert pcap.stat().st_mode & 0o777 == 0o600
    assert s["pcap_dropped"] == 0  # else the file cannot hold the whole stream
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    assert want in [hashlib.sha256(d).hexdigest() for d in _tshark_follow(pcap)]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cap")] == []


@needs_wire
@needs_tshark
def test_serve_netns_behind_the_nic_to_curl_with_pcap(tmp_path: Path) -> None:
    """``serve --wire netns -WWW``: the server's replies are the offloaded
    direction; curl in the peer namespace downloads 1 MiB (hash equal),
    the wire summary reports host and NIC CPU apart and the NIC's counters,
    and tshark decrypts the capture to the same bytes."""
    www = tmp_path / "www"
    www.mkdir()
    body = os.urandom(1 << 20)
    (www / "f.bin").write_bytes(body)
    pcap = tmp_path / "serve.pcapng"
    got = tmp_path / "got"
    cmd = [
        sys.executable, "-m", "tlsctl.cli", "serve", "-accept", "0", "--wire", "netns",
        "--offload", "sim-nic", "-WWW", str(www), "-naccept", "1", "--json",
        "--pcap", str(pcap),
    ]  # fmt: skip
    with spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as srv:
        line, rest = readline(srv, 60)
        listening = json.loads(line)
        assert listening["wire"] == "netns" and listening["host"] == listening["host_addr"]
        url = f"https://{listening['host_addr']}:{listening['port']}/f.bin"
        r = subprocess.run(
            ["ip", "netns", "exec", listening["peer_netns"], "curl", "-sSk", "-o", str(got), url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        stdout, stderr = srv.communicate(timeout=60)
        assert srv.returncode == 0, stderr.decode()
    assert got.read_bytes() == body
    events = [json.loads(x) for x in (rest + stdout).decode().splitlines() if x.strip()]
    conn = next(e for e in events if e.get("event") == "connection")
    assert conn["ok"] and conn["offload"] == "sim-nic" and conn["host_cpu_seconds"] >= 0
    wire = next(e for e in events if e.get("event") == "wire")
    assert wire["device_counters"]["tx_tls_ctx"] == 1
    assert wire["device_counters"]["tx_tls_encrypted_bytes"] >= len(body)
    assert wire["nic_cpu_seconds"] >= 0 and wire["host_cpu_seconds"] >= 0
    assert wire["pcap_bytes"] == pcap.stat().st_size
    assert wire["pcap_dropped"] == 0  # else the file cannot hold the whole stream
    served = _tshark_follow(pcap)
    assert any(d.endswith(body) and b"HTTP/1.1 200" in d[:200] for d in served)


@needs_wire
def test_pcap_never_overwrites(tmp_path: Path) -> None:
    """An existing file, or a symlink at the name, is refused before
    anything runs (one line, status 1) and left as it was."""
    if shutil.which("dumpcap") is None:
        pytest.skip("dumpcap not installed")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    link = tmp_path / "link.pcapng"
    link.symlink_to(victim)
    for target in (victim, link):
        r = run_tlsctl(
            "send", "--loopback", "--wire", "netns", "--size", "1K", "--pcap", str(target)
        )
        assert r.returncode == 1
        assert "exists (not overwritten" in r.stderr and r.stderr.count("\n") == 1
    assert victim.read_bytes() == b"keep me" and link.is_symlink()


# -- option errors (no wire needed) --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--faults", "jitter=1"], "unknown fault 'jitter'"),
        (["--faults", "split=0.1"], "means nothing on a real wire"),
        (["--faults", "redirect=0.1"], "means nothing on a real wire"),
        (["--faults", "drop=2"], "not a probability"),
    ],
)
def test_netns_fault_errors_name_faults(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["send", "--loopback", "--wire", "netns", "--offload", "sim-nic", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "--faults" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["send", "--loopback", "--wire", "netns", "--offload", "sim-nic", "--mss", "1000"],
            "--mss",
        ),
        (["send", "--loopback", "--pcap", "x.pcapng"], "--pcap needs --wire netns"),
        (["send", "f", "-connect", "h:1", "--exec-peer", "true"], "--exec-peer goes with"),
        (["send", "f", "-connect", "127.0.0.1:1", "--wire", "netns"], "in the peer namespace"),
        (["serve", "--wire", "netns", "--workers", "2"], "no --workers"),
    ],
)
def test_netns_usage_errors(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    if REASON is not None and "--wire" in argv and "--mss" not in argv:
        pytest.skip(REASON)  # refused earlier, for lack of the wire (tested below)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_netns_without_root_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No root (or no /dev/net/tun): one line on stderr, status 1, before
    anything is built; the in-process wire still works without root."""
    from tlsctl import realwire

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    why = realwire.unavailable_reason()
    assert why is not None and "needs root" in why and "--wire netns" in why
    assert main(["send", "--loopback", "--wire", "netns", "--size", "1K"]) == 1
    err = capsys.readouterr().err
    assert why in err and err.count("\n") == 1
    assert main(["serve", "--wire", "netns", "-accept", "0"]) == 1
    assert why in capsys.readouterr().err


def test_device_spec_for_the_real_wire(
    tcp_pair: Callable[[], tuple[socket.socket, socket.socket]], tmp_path: Path
) -> None:
    """``device_spec(wire="netns")``: the real wire's faults (any offload),
    no --mss; ``open_layer`` with a NIC control socket puts TX on NetTxPath
    (here the NIC is not there: refused, software TX, the reason kept)."""
    with pytest.raises(OffloadOptionError) as ei:
        device_spec("sim-nic", faults="split=0.1", wire="netns")
    assert ei.value.option == "--faults"
    with pytest.raises(OffloadOptionError) as ei:
        device_spec("sim-nic", mss=1000, wire="netns")
    assert ei.value.option == "--mss"
    assert device_spec("sw", faults="drop=0.1,seed=3", wire="netns") is None
    assert device_spec("sim-nic", faults="drop=0.1", wire="netns") == DeviceSpec("sim-nic")
    with pytest.raises(ValueError, match="open_layer"):
        nic_path(DeviceSpec("sim-nic", control="/x"))
    control = str(tmp_path / "no-nic")
    k = open_layer(tcp_pair()[0], "sim-nic", DeviceSpec("sim-nic", control=control))
    k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
    k.setsockopt(SOL_TLS, TLS_TX, random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128).pack())
    assert k.offload_refused is not None and f"cannot reach the NIC at {control}" in (
        k.offload_refused
    )
    assert layer_offload(k) == "sw"
    # RX too: NetRxPath, refused the same way (software RX, no device context).
    k.setsockopt(SOL_TLS, TLS_RX, random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128).pack())
    assert k.rx_device_report() is None
    k.close()


@needs_wire
def test_send_netns_waits_for_a_receiver_started_by_hand(
    pki: Pki, data: dict[int, Path], tmp_path: Path
) -> None:
    """Without --exec-peer: send names the peer namespace on stderr and waits;
    a receiver started there with ``ip netns exec`` gets every byte."""
    src = data[1 << 20]
    out = tmp_path / "got"
    version, suite = SUITES[5]
    cmd = [
        sys.executable, "-m", "tlsctl.cli", "send", str(src), "-connect", f"{PEER}:{PORT}",
        "--wire", "netns", "--offload", "sim-nic", "-CAfile", str(pki.ca), "-servername",
        "localhost", "--json",
    ]  # fmt: skip
    with spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as sender:
        assert sender.stderr is not None
        line = sender.stderr.readline().decode()
        m = re.search(r"ip netns exec (\S+) COMMAND", line)
        assert m is not None, line
        with (
            out.open("wb") as f,
            spawn(
                ["ip", "netns", "exec", m.group(1), *s_server_args(pki, version, suite, PORT)],
                stdin=subprocess.PIPE,
                stdout=f,
                stderr=subprocess.DEVNULL,
            ) as receiver,
        ):
            stdout, stderr = sender.communicate(timeout=60)
            assert sender.returncode == 0, stderr.decode()
            receiver.wait(20)
    s = json.loads(stdout)
    assert s["sha256"] == sha(src) == sha(out) and "peer_status" not in s
    _check_wire_summary(s, src.stat().st_size)


def test_capture_reads_the_packets_dumpcap_missed() -> None:
    """``--pcap`` reports what dumpcap says it dropped when it stops (its
    statistics on stderr, as dumpcap 4.x prints them even with ``-q``), so a
    capture that misses packets says so instead of looking complete (a
    tshark follow of such a file gave a different stream, once, under load)."""
    from tlsctl.pcapture import dropped_packets

    quiet = (
        "File: -\nPackets captured: 812\nPackets received/dropped on interface 'nic0': "
        "812/37 (pcap:37/dumpcap:0/flushed:0/ps_ifdrop:0) (95.6%)\n"
    )
    assert dropped_packets(quiet) == 37
    clean = quiet.replace("812/37 (pcap:37", "812/0 (pcap:0")
    assert dropped_packets(clean) == 0
    assert dropped_packets("dumpcap: killed\n") is None


@needs_tshark
def test_dumpcap_prints_the_statistics_the_capture_reads() -> None:
    """The line :func:`dropped_packets` reads is dumpcap's own: a one-second
    capture on loopback, ``-q`` as the capture runs it."""
    from tlsctl.pcapture import dropped_packets

    r = subprocess.run(
        ["dumpcap", "-q", "-n", "-i", "lo", "-f", "tcp", "-a", "duration:1", "-w", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # A count, not None; not necessarily 0: on a loaded machine dumpcap
    # can miss packets of whatever else runs on lo (8 seen at load 4).
    dropped = dropped_packets(r.stderr)
    assert isinstance(dropped, int) and dropped >= 0, r.stderr
    assert dropped_packets(r.stderr.replace("Packets received/dropped", "Packets")) is None


def test_settle_waits_until_dumpcap_wrote_the_last_frames(tmp_path: Path) -> None:
    """A short exchange on loopback, then :func:`settle` and at once the
    SIGINT the capture sends: every frame of it is in the file.  A fixed
    wait shorter than libpcap's block timeout (about 0.2 s) loses them all,
    uncounted (dumpcap says 0 received, 0 dropped)."""
    from tlsctl.pcapture import settle

    out = tmp_path / "lo.pcapng"
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    with out.open("wb") as f:
        proc = subprocess.Popen(
            ["dumpcap", "-q", "-n", "-i", "lo", "-f", f"tcp port {port}", "-w", "-"],
            stdout=f,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 15
            while os.fstat(f.fileno()).st_size == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)  # the filter is attached a moment after the header
            c = socket.create_connection(("127.0.0.1", port))
            a, _ = srv.accept()
            c.sendall(b"x" * 1000)
            assert a.recv(2000)
            c.close()
            a.close()
            settle(f.fileno())
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=30)
    srv.close()
    r = subprocess.run(
        ["tshark", "-r", str(out), "-T", "fields", "-e", "tcp.len"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lens = [int(x) for x in r.stdout.split()]
    # SYN, SYN-ACK, ACK, the 1000 bytes, their ACK, and both FINs' exchange.
    assert 1000 in lens and len(lens) >= 7, (lens, err.decode())
