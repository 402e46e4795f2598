"""``tlsctl.server`` in-process: ``serve`` as a library.

:func:`prepare` does the start-up checks, :func:`run` serves; every
connection's record, the label of its log line and the end of the server
come through the :class:`ServeHooks` callbacks and nothing is printed.
The clients are Python's ``ssl`` (an independent TLS stack).
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from tlsctl.exitcodes import ExitStatus
from tlsctl.server import ServeHooks, ServeOptions, Server, prepare, run
from tlsctl.tlsconf import ConfigError

pytestmark = pytest.mark.timeout(60)


def _client(port: int, data: bytes, close_notify: bool = True, echo: bool = False) -> None:
    """Send ``data`` (read it back from an echo server), then end with a
    close_notify or with a bare TCP close."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        s.sendall(data)
        got = bytearray()
        while echo and len(got) < len(data):
            got += s.recv(len(data) - len(got))
        assert bytes(got) == (data if echo else b"")
        if close_notify:
            s.unwrap()  # our close_notify, then the server's
        else:
            s.close()  # a TCP FIN without close_notify: a truncated stream


def _serve(
    opts: ServeOptions, clients: list[tuple[bytes, bool]]
) -> tuple[ExitStatus, list[tuple[dict[str, Any], str]], list[Server], list[str]]:
    records: list[tuple[dict[str, Any], str]] = []
    done: list[Server] = []
    warned: list[str] = []
    listening = prepare(opts)
    port = listening.bound[1]
    hooks = ServeHooks(
        on_record=lambda rec, head: records.append((rec, head)),
        warn=warned.append,
        done=done.append,
    )
    status: list[ExitStatus] = []
    # Not the main thread: run() installs no signal handlers there.
    t = threading.Thread(target=lambda: status.append(run(listening, hooks)))
    t.start()
    for data, clean in clients:
        _client(port, data, clean, echo=opts.mode == "echo")
    t.join(30)
    assert not t.is_alive()
    return status[0], records, done, warned


def test_save_dir_records_through_the_hooks(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = os.urandom(300_000)
    opts = ServeOptions(
        host="127.0.0.1", port=0, mode="save-dir", path=str(tmp_path), naccept=1, offload="sw"
    )
    status, records, done, warned = _serve(opts, [(data, True)])
    assert status is ExitStatus.OK and warned == []
    [(rec, head)] = records
    assert head == f"[1] {rec['peer']}" and rec["peer"].startswith("127.0.0.1:")
    assert rec["ok"] is True and rec["bytes_in"] == len(data) and rec["offload"] == "sw"
    assert rec["sha256"] == hashlib.sha256(data).hexdigest()
    assert Path(rec["file"]).read_bytes() == data
    assert [(s.accepted, s.failed) for s in done] == [(1, 0)]
    assert capfd.readouterr() == ("", "")


def test_a_truncated_stream_is_a_failed_record_and_an_incomplete_status(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # --echo: the client reads its bytes back (and the tickets with them),
    # so its bare close comes after the server took the connection.
    opts = ServeOptions(host="127.0.0.1", port=0, mode="echo", naccept=2, offload="sw")
    status, records, done, _warned = _serve(opts, [(b"x" * 1000, True), (b"y" * 10, False)])
    assert status is ExitStatus.INCOMPLETE
    by_conn = {rec["conn"]: rec for rec, _head in records}
    assert by_conn[1]["ok"] is True and by_conn[1]["bytes_in"] == by_conn[1]["bytes_out"] == 1000
    assert by_conn[2]["ok"] is False and by_conn[2]["truncated"] is True
    assert "without close_notify after 10 bytes" in by_conn[2]["error"]
    assert [(s.accepted, s.failed) for s in done] == [(2, 1)]
    assert capfd.readouterr() == ("", "")


def test_prepare_refuses_at_start_up(tmp_path: Path) -> None:
    taken = tmp_path / "taken.bin"
    taken.write_bytes(b"old")
    with pytest.raises(ConfigError, match="exists"):
        prepare(ServeOptions(host="127.0.0.1", port=0, mode="output", path=str(taken)))
    assert taken.read_bytes() == b"old"
    with pytest.raises(ConfigError, match="-key given without -cert"):
        prepare(ServeOptions(host="127.0.0.1", port=0, key=str(taken)))
    with pytest.raises(ConfigError, match="not a directory"):
        prepare(ServeOptions(host="127.0.0.1", port=0, mode="www", path=str(taken)))


def test_window_sets_every_accepted_connections_buffers() -> None:
    """``serve -w``: the listener's SO_RCVBUF/SO_SNDBUF, set before ``listen``,
    are every accepted connection's (the kernel doubles the value); without
    it the kernel's default (autotuned) stands."""
    from tlsctl.server.setup import listen

    for window in (None, 100_000):
        lst = listen("127.0.0.1", 0, window)
        try:
            c = socket.create_connection(lst.getsockname())
            a, _ = lst.accept()
            got = a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            sent = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            if window is None:
                assert got != 2 * 100_000
            else:
                assert got == sent == 2 * window
            a.close()
            c.close()
        finally:
            lst.close()


def test_window_option_bounds() -> None:
    from tests.helpers.peers import run_tlsctl

    r = run_tlsctl("serve", "-w", "1K", "--sink")
    assert r.returncode == 2 and "-w" in r.stderr and "Traceback" not in r.stderr
