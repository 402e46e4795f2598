"""``tlsctl send`` under Ctrl-C and SIGTERM, and ``send -`` on a live pipe.

Issue 11 items 2 and 9: an interrupted sender leaves whole records only on
the wire (then user_canceled, no close_notify), so the receiver reports a
cut transfer, never forged data, and what it received is exactly the prefix
send says it sent; SIGTERM cleans up like SIGINT (no temporary files, no
control socket); ``send -`` forwards what arrives on a pipe without
waiting for a full buffer.  Receivers are real processes: ``openssl
s_server`` writing what it decrypts to a file, and ``tlsctl serve``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.peers import TLSCTL, Pki, make_pki, openssl_server, spawn, tlsctl_server
from tlsctl.control import query

pytestmark = pytest.mark.timeout(240)

BIG = 256 << 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("big") / "big.bin"
    with p.open("wb") as f:
        block = os.urandom(1 << 20)
        for i in range(BIG >> 20):
            f.write(i.to_bytes(4, "big") + block[4:])
    return p


def prefix_sha(p: Path, n: int) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        while n > 0:
            chunk = f.read(min(1 << 20, n))
            if not chunk:
                break
            h.update(chunk)
            n -= len(chunk)
    return h.hexdigest()


def _sigint_default() -> None:
    # A background job (CI) starts with SIGINT ignored; a terminal's Ctrl-C
    # reaches a process with the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _until(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def interrupted_send(
    pki: Pki, port: int, src: Path, arrived: Callable[[], int], sig: int, *args: str
) -> tuple[int, str, int]:
    """Start send, signal it once at least 1 MiB has arrived (plus a random
    moment), return (exit status, stderr, bytes_sent from the JSON verdict)."""
    cmd = [
        *TLSCTL,
        "send",
        str(src),
        "-connect",
        f"localhost:{port}",
        "-CAfile",
        str(pki.ca),
        "--json",
        *args,
    ]
    with spawn(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default
    ) as proc:
        _until(lambda: arrived() >= 1 << 20 or proc.poll() is not None, "nothing arrived")
        time.sleep(random.uniform(0, 0.2))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    verdict = json.loads(out)
    assert verdict["ok"] is False, (proc.returncode, out, err)
    return proc.returncode, err, int(verdict["bytes_sent"])


def _size(p: Path) -> int:
    with contextlib.suppress(OSError):
        return p.stat().st_size
    return 0


@pytest.mark.parametrize("args", [[], ["--key-update-every", "1M"], ["-tls1_2"]])
def test_ctrl_c_to_s_server_leaves_whole_records(
    pki: Pki, big: Path, tmp_path: Path, args: list[str]
) -> None:
    """s_server decrypts and writes what it gets: exactly the prefix send
    reports, and it complains of an EOF (no close_notify), never of a bad MAC."""
    for trial in range(2):
        out = tmp_path / f"got{trial}.bin"
        with out.open("wb") as f, openssl_server(pki.cert, pki.key, f) as (srv, port):
            rc, line, sent = interrupted_send(
                pki, port, big, functools.partial(_size, out), signal.SIGINT, *args
            )
            srv.wait(20)
            assert srv.stderr is not None
            said = srv.stderr.read().decode(errors="replace").lower()
        assert "bad record mac" not in said and "decrypt" not in said, said
        assert "unexpected eof" in said, said  # no close_notify: a cut stream
        assert rc == 130, line
        assert f"interrupted by SIGINT: sent {sent} of {BIG} bytes" in line, line
        assert 0 < sent < BIG
        assert _size(out) == sent and prefix_sha(out, sent) == prefix_sha(big, sent)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_send_seen_by_serve_as_a_cut_stream(
    pki: Pki, big: Path, tmp_path: Path, sig: int, status: int
) -> None:
    """``tlsctl serve``'s record layer never sees a torn or repeated record:
    no authentication failure, the stream is reported as cut (no close_notify),
    and the bytes it stored are the prefix send says it sent."""
    for trial in range(2):
        save = tmp_path / f"save{trial}"
        save.mkdir()

        def arrived(d: Path = save) -> int:
            return sum(_size(p) for p in d.iterdir())

        with tlsctl_server(
            "-cert", str(pki.cert), "-key", str(pki.key), "--save-dir", str(save), "-naccept", "1"
        ) as srv:
            rc, line, sent = interrupted_send(
                pki, srv.port, big, arrived, sig, "--key-update-every", "4M"
            )
            (rec,) = [r for r in srv.records() if r.get("event", "connection") == "connection"]
        assert rc == status, line
        assert f"interrupted by {signal.Signals(sig).name}: sent {sent} of {BIG}" in line
        assert "authentication" not in json.dumps(rec) and rec.get("alert_sent") != 20, rec
        assert rec.get("truncated") or rec.get("clean_close") is False, rec  # no close_notify
        assert rec["bytes_in"] == sent
        (stored,) = list(save.iterdir())
        assert _size(stored) == sent and prefix_sha(stored, sent) == prefix_sha(big, sent)


# --- SIGTERM cleans up like SIGINT: --loopback's files and the control socket --------


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_loopback_send_leaves_no_files(tmp_path: Path, sig: int, status: int) -> None:
    tmp = tmp_path / "tmp"
    run = tmp_path / "run"
    tmp.mkdir()
    run.mkdir(mode=0o700)
    env = {**os.environ, "TMPDIR": str(tmp), "XDG_RUNTIME_DIR": str(run)}
    cmd = [*TLSCTL, "send", "--loopback", "--size", str(1 << 30), "--json"]
    with spawn(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,
    ) as proc:
        ctl = run / "tlsctl" / f"{proc.pid}.sock"

        def transferring() -> bool:
            if proc.poll() is not None:
                return True
            try:
                return bool(query(ctl)["connections"])
            except (OSError, ValueError):
                return False

        _until(transferring, "the loopback transfer did not start", timeout=120)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert f"interrupted by {signal.Signals(sig).name}" in err and "Traceback" not in err
    assert json.loads(out)["ok"] is False
    assert list(tmp.iterdir()) == []  # no payload, no certificate
    assert list((run / "tlsctl").iterdir()) == []  # no control socket


# --- send - forwards what arrives ------------------------------------------------------


def test_send_stdin_forwards_a_burst_without_waiting_for_more(pki: Pki) -> None:
    """200 kB written into a pipe that stays open reach the server while the
    pipe is still open; then EOF ends the transfer with equal hashes."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.cert, pki.key)
    got = bytearray()
    burst = os.urandom(200_000)
    with socket.create_server(("127.0.0.1", 0)) as ls:
        ls.settimeout(30)

        def serve() -> None:
            raw, _ = ls.accept()
            raw.settimeout(60)
            with ctx.wrap_socket(raw, server_side=True) as s:
                while chunk := s.recv(65536):
                    got.extend(chunk)
                s.unwrap().close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        r, w = os.pipe()
        cmd = [
            *TLSCTL,
            "send",
            "-",
            "-connect",
            f"localhost:{ls.getsockname()[1]}",
            "-CAfile",
            str(pki.ca),
            "--json",
        ]
        try:
            with spawn(
                cmd, stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ) as proc:
                os.close(r)
                os.write(w, burst)
                _until(
                    lambda: len(got) >= len(burst) or proc.poll() is not None,
                    "the burst did not arrive while the pipe was open",
                    timeout=30,
                )
                assert bytes(got) == burst and proc.poll() is None
                os.close(w)
                w = -1
                out, err = proc.communicate(timeout=30)
        finally:
            if w >= 0:
                os.close(w)
        t.join(10)
    assert proc.returncode == 0, err
    verdict = json.loads(out)
    assert verdict["ok"] is True and verdict["bytes_sent"] == len(burst)
    assert verdict["sha256"] == hashlib.sha256(burst).hexdigest() == hashlib.sha256(got).hexdigest()


# --- the guard itself, in process ------------------------------------------------------


def test_stop_signals_defer_inside_critical_sections() -> None:
    from tlsctl.signals import Interrupted, StopSignals

    old = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        with pytest.raises(Interrupted) as outside:
            signal.raise_signal(signal.SIGTERM)
        assert outside.value.status == 143
    with StopSignals() as stop:
        steps = []
        with pytest.raises(Interrupted) as at_end, stop.critical():
            signal.raise_signal(signal.SIGINT)
            steps.append("finished")  # the step is not cut
        assert steps == ["finished"] and at_end.value.status == 130
        with stop.critical(check=False):  # clean-up after a stop: not raised
            steps.append("cleaned")
        assert steps == ["finished", "cleaned"]
    with StopSignals() as stop:
        abandoned = []
        stop.abandon = lambda: abandoned.append(True)
        with pytest.raises(Interrupted), stop.critical():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C: stop now
            steps.append("not reached")
        assert abandoned == [True] and "not reached" not in steps
    with StopSignals() as stop:
        with stop.shielded():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            steps.append("shielded")
        assert steps[-1] == "shielded" and stop.requested
        with pytest.raises(Interrupted):
            stop.check()
    assert signal.getsignal(signal.SIGINT) is old
