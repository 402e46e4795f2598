"""``tlsctl serve -WWW DIR`` against real HTTP clients over TLS.

curl (keep-alive, HEAD, HTTP/1.0), ``openssl s_client`` with hand-written
requests (pipelining, oversized headers; its ``-msg`` trace shows the
close_notify we send), Python's ``ssl`` for exact close handling (with
``suppress_ragged_eofs=False`` a read returns b"" only after the peer's
close_notify, and ``unwrap()`` returns only when the peer answers ours),
and a byte-recording TCP relay to count the records on the wire.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.peers import OPENSSL, Pki, TlsctlServer, make_pki, spawn, tlsctl_server
from tests.helpers.wire import split_records

pytestmark = pytest.mark.timeout(180)

BIG = 100_000
SECRET = b"OUTSIDE-SECRET-" * 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """DIR with files, a subdirectory, symlinks (out of and inside DIR), a FIFO."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (root / "index.html").write_bytes(b"<p>top</p>\n")
    (root / "sub" / "index.html").write_bytes(b"<p>sub</p>\n")
    (root / "empty").write_bytes(b"")
    (root / "nodir").mkdir()
    (tmp_path / "outside.txt").write_bytes(SECRET)
    (root / "out").symlink_to(tmp_path / "outside.txt")
    (root / "in").symlink_to("a.txt")
    (root / "subln").symlink_to("sub")
    os.mkfifo(root / "fifo")
    return root


def www(pki: Pki, root: Path, *args: str) -> contextlib.AbstractContextManager[TlsctlServer]:
    return tlsctl_server("-cert", str(pki.cert), "-key", str(pki.key), "-WWW", str(root), *args)


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "30", *args], capture_output=True, text=True, timeout=timeout
    )


def tls_client(pki: Pki, port: int) -> ssl.SSLSocket:
    """Python's ssl; a TCP close without close_notify is an error, not EOF."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)


def read_to_close_notify(s: ssl.SSLSocket) -> bytes:
    """Everything until the peer's close_notify (SSLEOFError without one)."""
    out = bytearray()
    while chunk := s.recv(1 << 16):
        out += chunk
    return bytes(out)


def responses(data: bytes, head: tuple[bool, ...]) -> list[tuple[int, dict[str, str], bytes]]:
    """Split pipelined responses: (status, headers, body); ``head[i]``: the
    i-th answered a HEAD (no body whatever Content-Length says)."""
    out = []
    for is_head in head:
        top, sep, data = data.partition(b"\r\n\r\n")
        assert sep, "incomplete response head"
        line, *fields = top.decode("latin-1").split("\r\n")
        hdrs = {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
        n = 0 if is_head else int(hdrs["content-length"])
        out.append((int(line.split()[1]), hdrs, data[:n]))
        data = data[n:]
    assert data == b"", "bytes after the last response"
    return out


# --- keep-alive, HEAD, HTTP/1.0 with curl ------------------------------------------


def test_curl_keep_alive_serves_several_requests_on_one_connection(
    pki: Pki, site: Path, tmp_path: Path
) -> None:
    with www(pki, site, "-naccept", "1") as srv:
        base = f"https://localhost:{srv.port}"
        outs = [tmp_path / f"o{i}" for i in range(4)]
        r = curl(
            "--cacert",
            str(pki.ca),
            "-w",
            "%{http_code} %{num_connects}\n",
            f"{base}/a.txt",
            f"{base}/big.bin",
            f"{base}/sub/",
            f"{base}/",
            *(a for o in outs for a in ("-o", str(o))),
        )
        (rec,) = srv.records()
    assert r.returncode == 0, r.stderr
    # One TCP connection (curl's count of new connections per transfer).
    assert r.stdout.split("\n")[:4] == ["200 1", "200 0", "200 0", "200 0"]
    assert [o.read_bytes() for o in outs] == [
        (site / "a.txt").read_bytes(),
        (site / "big.bin").read_bytes(),
        b"<p>sub</p>\n",
        b"<p>top</p>\n",
    ]
    assert rec["ok"]
    assert [(q["method"], q["target"], q["status"], q["bytes"]) for q in rec["requests"]] == [
        ("GET", "/a.txt", 200, 6),
        ("GET", "/big.bin", 200, BIG),
        ("GET", "/sub/", 200, 11),
        ("GET", "/", 200, 11),
    ]
    assert rec["http"] == "GET /a.txt 200, GET /big.bin 200, GET /sub/ 200, GET / 200"


def test_curl_head_and_http10(pki: Pki, site: Path, tmp_path: Path) -> None:
    with www(pki, site, "-naccept", "2") as srv:
        base = f"https://localhost:{srv.port}"
        head = curl("--cacert", str(pki.ca), "-I", f"{base}/big.bin")
        out = tmp_path / "o"
        old = curl(
            "--cacert", str(pki.ca), "--http1.0", "-D", "-", "-o", str(out), f"{base}/big.bin"
        )
        recs = srv.records()
    assert head.returncode == 0 and old.returncode == 0, head.stderr + old.stderr
    # (text mode: curl's CRLFs read as "\n")
    assert head.stdout.startswith("HTTP/1.1 200 OK\n")
    assert f"content-length: {BIG}\n" in head.stdout.lower()
    assert old.stdout.startswith("HTTP/1.1 200 OK\n")
    assert "connection: close\n" in old.stdout.lower()  # 1.0: no keep-alive
    assert out.read_bytes() == (site / "big.bin").read_bytes()
    assert sorted((q["method"], q["bytes"]) for r in recs for q in r["requests"]) == [
        ("GET", BIG),
        ("HEAD", 0),
    ]


# --- hand-written requests with s_client ---------------------------------------------


def s_client(port: int, data: bytes, tmp_path: Path) -> tuple[bytes, str]:
    """``openssl s_client -msg``: writes ``data`` and keeps stdin open, so it
    is the server that ends the connection; returns (bytes received, trace)."""
    trace = tmp_path / "msg.txt"
    cmd = [
        OPENSSL,
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-quiet",
        "-no_ign_eof",
        "-nocommands",
        "-msg",
        "-msgfile",
        str(trace),
    ]
    with spawn(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(data)
        proc.stdin.flush()
        out = proc.stdout.read()  # until s_client exits: the server closed
        proc.wait(30)
    return out, trace.read_text()


SERVER_CLOSE_NOTIFY = "<<< TLS 1.3, Alert [length 0002], warning close_notify"


def test_s_client_pipelined_requests_in_one_record(pki: Pki, site: Path, tmp_path: Path) -> None:
    reqs = (
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /sub HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with www(pki, site, "-naccept", "1") as srv:
        out, trace = s_client(srv.port, reqs, tmp_path)
        (rec,) = srv.records()
    got = responses(out, (False, True, False, False))
    assert [(st, body) for st, _h, body in got] == [
        (200, b"hello\n"),
        (200, b""),
        (404, b"404 Not Found\n"),
        (200, b"<p>sub</p>\n"),
    ]
    assert got[1][1]["content-length"] == str(BIG)
    assert got[3][1]["connection"] == "close"
    assert SERVER_CLOSE_NOTIFY in trace
    # The layer's record count (getsockopt TLS_TX): one record per response
    # (header and body together), then the close_notify.
    assert rec["tx_seq_at_end"] - rec["tx_seq_at_handoff"] == 4 + 1
    assert rec["ok"]
    assert rec["http"] == "GET /a.txt 200, HEAD /big.bin 200, GET /nope 404, GET /sub 200"


@pytest.mark.parametrize(("header_bytes", "status"), [(16 * 1024, 200), (40 * 1024, 431)])
def test_header_section_limit(
    pki: Pki, site: Path, tmp_path: Path, header_bytes: int, status: int
) -> None:
    """16 KiB of headers are served; beyond the limit 431, then close_notify
    (s_client sees it), never a silent close."""
    big = b"".join(b"X-Fill-%d: %s\r\n" % (i, b"a" * 1000) for i in range(header_bytes // 1000 + 1))
    req = b"GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + big + b"\r\n"
    assert len(req) >= header_bytes
    with www(pki, site, "-naccept", "1") as srv:
        out, trace = s_client(srv.port, req, tmp_path)
        (rec,) = srv.records()
    ((got, hdrs, _body),) = responses(out, (False,))
    assert got == status
    assert hdrs["connection"] == "close"
    assert SERVER_CLOSE_NOTIFY in trace
    assert rec["ok"] and rec["requests"][0]["status"] == status


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 405),
        (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /a.txt HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /a.txt HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ],
    ids=["post", "unknown-method", "garbage", "no-host", "http2", "nul"],
)
def test_bad_requests_get_a_status_then_close_notify(
    pki: Pki, site: Path, request_bytes: bytes, status: int
) -> None:
    with www(pki, site, "-naccept", "1") as srv:
        with tls_client(pki, srv.port) as s:
            s.sendall(request_bytes)
            data = read_to_close_notify(s)  # SSLEOFError on a bare TCP close
        (rec,) = srv.records()
    ((got, hdrs, _body),) = responses(data, (False,))
    assert got == status
    assert hdrs["connection"] == "close"
    if status == 405:
        assert hdrs["allow"] == "GET, HEAD"
    assert rec["ok"] and [q["status"] for q in rec["requests"]] == [status]


@pytest.mark.parametrize("offload", ["sw", "none"])
@pytest.mark.parametrize("sent", [b"", b"GET /a.txt HTTP/1.1\r\nHo"], ids=["nothing", "partial"])
def test_close_notify_before_a_complete_request_is_answered(
    pki: Pki, site: Path, offload: str, sent: bytes
) -> None:
    """The client's close_notify (nothing or half a request sent) gets ours
    back: Python's unwrap() returns only when it arrives."""
    with www(pki, site, "-naccept", "1", "--offload", offload) as srv:
        with tls_client(pki, srv.port) as s:
            s.sendall(sent)
            s.unwrap()  # SSLEOFError / OSError if the server just closed
        (rec,) = srv.records()
        err = srv.stderr()
    assert "Traceback" not in err
    if sent:
        assert not rec["ok"]
        assert rec["error"] == "peer closed the connection in the middle of an HTTP request"
    else:
        assert rec["ok"] and rec["requests"] == [] and rec["http"] == "no request"


@pytest.mark.parametrize(
    ("sent", "statuses"),
    [
        (b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n", [200]),  # then idle: a quiet close
        (b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /a", [200, 408]),  # stuck mid-request
    ],
    ids=["idle", "mid-request"],
)
def test_idle_keep_alive_ends_at_the_timeout_with_close_notify(
    pki: Pki, site: Path, sent: bytes, statuses: list[int]
) -> None:
    with www(pki, site, "-naccept", "1", "--timeout", "1") as srv:
        with tls_client(pki, srv.port) as s:
            s.sendall(sent)
            data = read_to_close_notify(s)  # the server ends it: close_notify
        (rec,) = srv.records()
    got = responses(data, (False,) * len(statuses))
    assert [st for st, _h, _b in got] == statuses
    assert rec["ok"] and [q["status"] for q in rec["requests"]] == statuses


# --- what may be opened -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/out", 403),  # symlink to a file outside DIR
        ("/in", 403),  # symlink inside DIR: not served either (documented)
        ("/subln/index.html", 403),  # a symlinked directory on the way
        ("/fifo", 403),  # not a regular file
        ("/nodir/", 404),  # a directory without index.html
        ("/a.txt/x", 404),
        ("/missing", 404),
        ("/%2e%2e/outside.txt", 403),
        ("/sub%2F..%2F..%2Foutside.txt", 403),
        ("/empty", 200),
    ],
)
def test_only_regular_files_inside_dir(pki: Pki, site: Path, path: str, status: int) -> None:
    with www(pki, site, "-naccept", "1") as srv:
        r = curl(
            "--cacert",
            str(pki.ca),
            "--path-as-is",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"https://localhost:{srv.port}{path}",
        )
        (rec,) = srv.records()
    assert r.returncode == 0, r.stderr
    assert r.stdout == str(status)
    assert rec["requests"][0]["status"] == status


def test_fifo_does_not_hang_and_sigint_exits(pki: Pki, site: Path) -> None:
    """A FIFO is refused at once (opening it for reading would block until
    a writer comes), several times over one connection and on several; then
    SIGINT stops the server."""
    with www(pki, site) as srv:
        port = srv.port
        url = f"https://localhost:{port}/fifo"
        runs = [
            curl(
                "--cacert",
                str(pki.ca),
                "-o",
                "/dev/null",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} ",
                url,
                url,
            )
            for _ in range(3)
        ]
        proc = srv.proc
        proc.send_signal(signal.SIGINT)
        proc.wait(20)  # a deadline, not a measurement: a hung server fails here
    assert [r.stdout for r in runs] == ["403 403 "] * 3


def test_symlink_swap_race_never_serves_outside_dir(pki: Pki, site: Path) -> None:
    """While a thread keeps replacing DIR/f (a regular file) with a symlink to
    a file outside DIR and back, thousands of requests for /f get the inside
    file or a 403/404, never a byte of the outside file."""
    inside = b"inside " * 50
    f = site / "f"
    f.write_bytes(inside)
    as_file, as_link = site / ".f.file", site / ".f.link"
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set():
            as_link.symlink_to(site.parent / "outside.txt")
            os.rename(as_link, f)
            as_file.write_bytes(inside)
            os.rename(as_file, f)
            swaps += 1

    seen: dict[int, int] = {}
    seen_lock = threading.Lock()  # three clients count into it
    leaked: list[bytes] = []
    n_clients, per_client = 3, 800

    def client() -> None:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        conn = http.client.HTTPSConnection("localhost", srv.port, context=ctx, timeout=30)
        for _ in range(per_client):
            conn.request("GET", "/f")
            resp = conn.getresponse()
            body = resp.read()
            with seen_lock:
                seen[resp.status] = seen.get(resp.status, 0) + 1
            if (resp.status == 200 and body != inside) or b"OUTSIDE" in body:
                leaked.append(body)
        conn.close()

    with www(pki, site) as srv:
        t = threading.Thread(target=swapper)
        t.start()
        try:
            clients = [threading.Thread(target=client) for _ in range(n_clients)]
            for c in clients:
                c.start()
            for c in clients:
                c.join(150)
        finally:
            stop.set()
            t.join(10)
    assert not leaked, f"{len(leaked)} of {sum(seen.values())} responses: not the inside file"
    assert sum(seen.values()) == n_clients * per_client
    assert set(seen) <= {200, 403, 404}
    # The race was really run: both the file and the symlink were met.
    assert seen.get(200, 0) > 0 and seen.get(403, 0) + seen.get(404, 0) > 0, seen
    assert swaps > 100


# --- the header joins the body's first record ------------------------------------------


@contextlib.contextmanager
def recording_relay(upstream: int) -> Iterator[tuple[int, list[bytearray]]]:
    """A TCP relay on loopback; for each connection, the bytes the server sent
    (one bytearray per connection, in order)."""
    lst = socket.create_server(("127.0.0.1", 0))
    lst.settimeout(0.2)
    captures: list[bytearray] = []
    stop = threading.Event()

    def pump(cl: socket.socket) -> None:
        cap = bytearray()
        captures.append(cap)
        with cl, socket.create_connection(("127.0.0.1", upstream)) as up:
            open_ = {cl: up, up: cl}
            while open_ and not stop.is_set():
                ready, _, _ = select.select(list(open_), [], [], 0.2)
                for s in ready:
                    try:
                        data = s.recv(1 << 16)
                    except ConnectionResetError:  # curl may close with our close_notify unread
                        data = b""
                    if s is up:
                        cap += data
                    if data:
                        open_[s].sendall(data)
                    else:
                        with contextlib.suppress(OSError):
                            open_[s].shutdown(socket.SHUT_WR)
                        del open_[s]

    def accept() -> None:
        while not stop.is_set():
            try:
                cl, _ = lst.accept()
            except TimeoutError:
                continue
            pump(cl)

    t = threading.Thread(target=accept)
    t.start()
    try:
        yield lst.getsockname()[1], captures
    finally:
        stop.set()
        t.join(10)
        lst.close()


GCM12_OVERHEAD = 5 + 8 + 16  # TLS 1.2 AES-GCM: header, explicit nonce, tag


@pytest.mark.parametrize("offload", ["sw", "sim-nic", "none"])
def test_header_and_body_share_records_on_the_wire(
    pki: Pki, site: Path, tmp_path: Path, offload: str
) -> None:
    """TLS 1.2 (record types are visible on the wire): the server's
    application_data records, counted in the raw TCP stream, carry the
    response packed: a small file with its header is one record, a 100 kB
    file is ceil((header + body) / 16384) full records."""
    with (
        www(
            pki,
            site,
            "-naccept",
            "2",
            "--offload",
            offload,
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ) as srv,
        recording_relay(srv.port) as (port, caps),
    ):
        heads = []
        for name in ("a.txt", "big.bin"):
            hfile = tmp_path / f"{name}.head"
            r = curl(
                "--cacert",
                str(pki.ca),
                "--connect-to",
                f"localhost:443:127.0.0.1:{port}",
                "-D",
                str(hfile),
                "-o",
                "/dev/null",
                f"https://localhost/{name}",
            )
            assert r.returncode == 0, r.stderr
            heads.append(len(hfile.read_bytes()))
        recs = srv.records()
    assert all(r["ok"] and r["offload"] == offload for r in recs)
    for cap, head, size in zip(caps, heads, (6, BIG), strict=True):
        data = [len(r) - GCM12_OVERHEAD for r in split_records(bytes(cap)) if r[0] == 23]
        whole = head + size
        assert data == [min(16384, whole - i) for i in range(0, whole, 16384)]
