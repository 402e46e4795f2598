"""tlsctl send -> tlsctl serve --sink beside curl <- openssl s_server -WWW and plain TCP.

Side by side in one run, interleaved over ``--repeat`` rounds, the same
file (default 1 GiB) over loopback:

* ``tlsctl``  - ``tlsctl serve --sink -naccept 1`` and ``tlsctl send FILE``
                (``--offload sw`` on both ends, the user-space record layer);
                the time is what ``send --json`` reports (first byte to the
                peer's close, handshake excluded); ``wall`` is what a user
                sees (``time tlsctl send``: process start to exit), broken
                down into handshake, transfer and the rest (start-up,
                waiting for the file's hash, close);
* ``openssl`` - ``openssl s_server -WWW`` serving the file to ``curl``, what
                a user would pick today; the time is curl's total minus its
                TLS connect time; ``wall`` is curl's ``time_total``;
* ``tcp``     - plain TCP moved by a Python program (``readinto`` +
                ``sendall`` to a ``recv_into`` sink), the user-space ceiling.

Both TLS pairs negotiate their defaults (TLS 1.3, AES-256-GCM here).  The
ratios are printed at the end; ``--json`` prints every run.  Peak RSS of
``tlsctl send`` comes from ``wait4`` (its own rusage).

Usage: python bench/pair.py [--size 1G] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tlsctl.units import parse_size

TLSCTL = [sys.executable, "-m", "tlsctl"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early: {proc.args}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}")


def run_tlsctl(path: Path, size: int, suites: list[str]) -> dict[str, float]:
    port = _free_port()
    # -naccept 2: the readiness probe above is one (empty) connection.
    srv = subprocess.Popen(
        [
            *TLSCTL,
            "serve",
            "-accept",
            f"127.0.0.1:{port}",
            "--sink",
            "-naccept",
            "2",
            "--offload",
            "sw",
            "-quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, srv)
        t0 = time.perf_counter()
        send = subprocess.Popen(
            [
                *TLSCTL,
                "send",
                str(path),
                "-connect",
                f"127.0.0.1:{port}",
                "-k",
                "--offload",
                "sw",
                "--json",
                *suites,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert send.stdout is not None
        text = send.stdout.read()
        # wait4: this child's own rusage, so the peak RSS is send's alone.
        _pid, status, usage = os.wait4(send.pid, 0)
        wall = time.perf_counter() - t0
        send.returncode = os.waitstatus_to_exitcode(status)
        if send.returncode != 0:
            raise RuntimeError(f"tlsctl send exited {send.returncode}")
        rss = usage.ru_maxrss / 1024
        cpu = usage.ru_utime + usage.ru_stime
        res = json.loads(text)
        if res["bytes"] != size:
            raise RuntimeError(f"tlsctl send moved {res['bytes']} of {size} bytes")
        handshake = res["handshake_ms"] / 1000
        return {
            "bytes_per_second": size / res["seconds"],
            "send_peak_rss_mib": rss,
            "cpu": cpu,
            "wall": wall,
            "handshake": handshake,
            "transfer": res["seconds"],
            "rest": wall - handshake - res["seconds"],
        }
    finally:
        srv.terminate()
        srv.wait(30)


def run_openssl(
    path: Path, size: int, cert: Path, key: Path, suites: list[str]
) -> dict[str, float]:
    port = _free_port()
    srv = subprocess.Popen(
        [
            "openssl",
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-WWW",
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-quiet",
            "-naccept",
            "2",
            *suites,
        ],
        cwd=path.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, srv)
        curl = subprocess.Popen(
            [
                "curl",
                "-sS",
                "-k",
                "--http1.0",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download} %{time_appconnect} %{time_total}",
                f"https://127.0.0.1:{port}/{path.name}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert curl.stdout is not None
        text = curl.stdout.read()
        # wait4: curl's own CPU time, beside tlsctl send's.
        _pid, status, usage = os.wait4(curl.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"curl exited {os.waitstatus_to_exitcode(status)}")
        got, appconnect, total = text.split()
        if int(got) != size:
            raise RuntimeError(f"curl got {got} of {size} bytes")
        return {
            "bytes_per_second": size / (float(total) - float(appconnect)),
            "wall": float(total),
            "cpu": usage.ru_utime + usage.ru_stime,
        }
    finally:
        srv.kill()
        srv.wait(30)


_TCP_SINK = """
import socket, sys
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
print(ls.getsockname()[1], flush=True)
c, _ = ls.accept(); buf = bytearray(1 << 20); total = 0
while n := c.recv_into(buf): total += n
c.sendall(total.to_bytes(8, "big"))
"""


def run_tcp(path: Path, size: int) -> dict[str, float]:
    sink = subprocess.Popen([sys.executable, "-c", _TCP_SINK], stdout=subprocess.PIPE)
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as s, open(path, "rb") as f:
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            t0 = time.perf_counter()
            while n := f.readinto(buf):
                s.sendall(view[:n])
            s.shutdown(socket.SHUT_WR)
            got = int.from_bytes(s.recv(8), "big")
            wall = time.perf_counter() - t0
        if got != size:
            raise RuntimeError(f"tcp sink got {got} of {size} bytes")
        return {"bytes_per_second": size / wall}
    finally:
        sink.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--ciphersuites",
        metavar="LIST",
        help="TLS 1.3 suites for both pairs (default: what each side negotiates, "
        "TLS_AES_256_GCM_SHA384 with OpenSSL's defaults)",
    )
    args = ap.parse_args()
    for tool in ("openssl", "curl"):
        if shutil.which(tool) is None:
            sys.exit(f"pair.py: {tool} not found")
    size = parse_size(args.size, minimum=1)
    suites = ["-ciphersuites", args.ciphersuites] if args.ciphersuites else []
    runs: dict[str, list[dict[str, float]]] = {"tlsctl": [], "openssl": [], "tcp": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        tmp = Path(d)
        path = tmp / "file.bin"
        with open(path, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(size // len(chunk)):
                f.write(chunk)
            f.write(chunk[: size % len(chunk)])
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-subj",
                "/CN=localhost",
                "-days",
                "1",
            ],
            check=True,
            capture_output=True,
        )
        for _ in range(args.repeat):
            runs["tlsctl"].append(run_tlsctl(path, size, suites))
            runs["openssl"].append(run_openssl(path, size, cert, key, suites))
            runs["tcp"].append(run_tcp(path, size))
    med = {m: statistics.median(r["bytes_per_second"] for r in rs) for m, rs in runs.items()}
    wall = {m: statistics.median(r["wall"] for r in runs[m]) for m in ("tlsctl", "openssl")}
    rss = max(r["send_peak_rss_mib"] for r in runs["tlsctl"])
    targets = [
        ("tlsctl/openssl throughput", med["tlsctl"] / med["openssl"], ">=", 1.5),
        ("tlsctl/tcp throughput", med["tlsctl"] / med["tcp"], ">=", 0.6),
        ("curl time_total / tlsctl send wall", wall["openssl"] / wall["tlsctl"], ">=", 1.0),
        ("tlsctl send peak RSS MiB", rss, "<", 100),
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "size": size,
                    "runs": runs,
                    "median_bytes_per_second": med,
                    "median_wall_s": wall,
                    "loadavg": os.getloadavg(),
                    "targets": [
                        {"what": w, "value": v, "op": op, "target": t, "pass": _meets(v, op, t)}
                        for w, v, op, t in targets
                    ],
                },
                indent=2,
            )
        )
        return
    for m, rs in runs.items():
        figures = ", ".join(f"{r['bytes_per_second'] / 1e9:.2f}" for r in rs)
        print(f"{m:<8} median {med[m] / 1e9:.2f} GB/s  (runs: {figures})")
    parts = {
        k: statistics.median(r[k] for r in runs["tlsctl"])
        for k in ("handshake", "transfer", "rest")
    }
    cpu = {m: statistics.median(r["cpu"] for r in runs[m]) for m in ("tlsctl", "openssl")}
    walls = {m: ", ".join(f"{r['wall']:.2f}" for r in runs[m]) for m in ("tlsctl", "openssl")}
    print(
        f"wall (process start to exit, median): tlsctl send {wall['tlsctl']:.2f} s = handshake "
        f"{parts['handshake']:.3f} + transfer {parts['transfer']:.2f} + start-up/hash/close "
        f"{parts['rest']:.2f}; curl {wall['openssl']:.2f} s"
    )
    print(f"wall runs: tlsctl send {walls['tlsctl']}; curl {walls['openssl']}")
    print(
        f"CPU (user+sys, median): tlsctl send {cpu['tlsctl']:.2f} s; curl {cpu['openssl']:.2f} s "
        f"(load average {os.getloadavg()[0]:.2f})"
    )
    failed = 0
    for what, value, op, target in targets:
        ok = _meets(value, op, target)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {value:.2f} (target {op} {target})")
    sys.exit(1 if failed else 0)


def _meets(value: float, op: str, target: float) -> bool:
    return value >= target if op == ">=" else value < target


if __name__ == "__main__":
    main()
