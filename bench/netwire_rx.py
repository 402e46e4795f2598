"""The real wire's receive side, measured: the receiving host's CPU per GB.

``openssl s_client`` in the peer namespace sends a file to a receiver in the
host namespace behind the NIC process (``offload.netwire``), for each mode:

* ``tcp``     - plain TCP: a ``recv_into`` loop in this script's process
                (the sender is ``socket.sendfile``), through the same NIC
                process, which only forwards;
* ``sw``      - ``tlsctl serve --wire netns --offload sw --sink``: the
                layer's software RX;
* ``sim-nic`` - ``tlsctl serve --wire netns --offload sim-nic --sink``: the
                NIC process decrypts on the way in, the host takes its marks
                (``offload.netwire.nic_rx`` / ``rxpath``).

Per row: host s/GB (the receiving connection thread's CPU, user + system,
from accept to the last byte: ``serve``'s per-connection
``host_cpu_seconds``, or this process's reader thread for ``tcp``), NIC
s/GB (the NIC process's CPU over the run, beside the host's, never added),
throughput, and the host's context switches per 128 MiB (voluntary +
involuntary of the server's threads, polled from /proc every 20 ms; the
tcp reader's own).  Modes alternate inside each repeat; medians.  The
issue's target is host s/GB of sim-nic <= 1.4x tcp's.

``--python`` runs ``serve`` (and the tcp row's wire) with another
interpreter, e.g. main's venv, so two checkouts can be measured side by
side with the same script.

Usage: python bench/netwire_rx.py [--size 256M] [--repeat 1] [--tls 1.3]
       [--modes tcp,sw,sim-nic] [--python PY] [--json]
Needs root, /dev/net/tun and openssl.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from tlsctl.units import parse_size

MODES = ("tcp", "sw", "sim-nic")
RETRIES = 3
"""A failed transfer is reported (``failed_runs``) and run again, at most this often."""
GB = 1e9
SEND = (
    "import socket,sys\n"
    "s=socket.create_connection((sys.argv[1],int(sys.argv[2])))\n"
    "f=open(sys.argv[3],'rb'); s.sendfile(f); s.shutdown(socket.SHUT_WR); s.recv(1)\n"
)


def _ctxt(path: str) -> int:
    """Voluntary + involuntary context switches in a /proc status file."""
    n = 0
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    n += int(line.split()[1])
    except OSError:
        pass
    return n


class _Switches:
    """The context switches of a process's threads, polled until it exits
    (a thread that ends keeps its last count)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last: dict[str, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            for p in glob.glob(f"/proc/{self.pid}/task/*/status"):
                n = _ctxt(p)
                if n:
                    self.last[p] = n

    def total(self) -> int:
        self._stop.set()
        self._t.join()
        return sum(self.last.values())


def _s_client(tls: str) -> list[str]:
    v = ["-tls1_3"] if tls == "1.3" else ["-tls1_2"]
    return ["openssl", "s_client", "-quiet", "-no_ign_eof", "-nocommands", *v]


def run_serve(
    py: str, mode: str, src: str, size: int, tls: str, pki: tuple[str, str]
) -> dict[str, Any]:
    """One ``serve --wire netns`` run: its connection's and the wire's facts."""
    cmd = [
        py, "-m", "tlsctl.cli", "serve", "-accept", "0", "--wire", "netns", "--offload", mode,
        "-cert", pki[0], "-key", pki[1], "-naccept", "1", "--json", "--sink",
    ]  # fmt: skip
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert srv.stdout is not None
        where = json.loads(srv.stdout.readline())
        sw = _Switches(srv.pid)
        with open(src, "rb") as f:
            r = subprocess.run(
                ["ip", "netns", "exec", where["peer_netns"], *_s_client(tls),
                 "-connect", f"{where['host_addr']}:{where['port']}"],
                stdin=f, capture_output=True, timeout=600,
            )  # fmt: skip
        out, err = srv.communicate(timeout=600)
        switches = sw.total()
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    if r.returncode or srv.returncode:
        raise RuntimeError(f"{mode}: {err.decode(errors='replace')[-800:]}")
    events = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
    conn = next(e for e in events if e.get("event") == "connection")
    wire = next(e for e in events if e.get("event") == "wire")
    if conn.get("bytes_in") != size:
        raise RuntimeError(f"{mode}: received {conn.get('bytes_in')} of {size} bytes")
    return {
        "host_s": conn["host_cpu_seconds"],
        "nic_s": wire["nic_cpu_seconds"],
        "seconds": conn["seconds"],
        "switches": switches,
        "rx": conn.get("rx_offload", {}),
    }


def run_tcp_here(src: str, size: int) -> dict[str, Any]:
    """The tcp row: plain TCP through the NIC process, read in this process."""
    from offload.netwire.netns import NetnsWire
    from tlsctl.realwire import HOST_SIDE, PEER_SIDE

    with NetnsWire("sim-nic") as wire:
        lsock = wire.socket(HOST_SIDE)
        lsock.bind((wire.addr(HOST_SIDE), 0))
        lsock.listen(1)
        port = lsock.getsockname()[1]
        got: dict[str, Any] = {}

        def reader() -> None:
            conn, _ = lsock.accept()
            status = "/proc/thread-self/status"
            c0, t0, w0 = time.thread_time(), time.monotonic(), _ctxt(status)
            buf = memoryview(bytearray(256 << 10))
            total = 0
            while n := conn.recv_into(buf):
                total += n
            got.update(
                host_s=time.thread_time() - c0,
                seconds=time.monotonic() - t0,
                switches=_ctxt(status) - w0,
                total=total,
            )
            conn.sendall(b"x")
            conn.close()

        t = threading.Thread(target=reader)
        t.start()
        nic0 = wire.nic_cpu_seconds()
        subprocess.run(
            wire.argv(
                PEER_SIDE, [sys.executable, "-c", SEND, wire.addr(HOST_SIDE), str(port), src]
            ),
            check=True,
            timeout=600,
        )
        t.join()
        got["nic_s"] = wire.nic_cpu_seconds() - nic0
        lsock.close()
    if got.get("total") != size:
        raise RuntimeError(f"tcp: received {got.get('total')} of {size} bytes")
    return got


def run_tcp(py: str, src: str, size: int) -> dict[str, Any]:
    """The tcp row with interpreter ``py`` (its checkout's NIC process)."""
    r = subprocess.run(
        [py, os.path.abspath(__file__), "--tcp-once", src, "--size", str(size)],
        capture_output=True,
        timeout=600,
        check=False,
    )
    if r.returncode:
        raise RuntimeError(f"tcp: {r.stderr.decode(errors='replace')[-800:]}")
    return dict(json.loads(r.stdout))


def make_pki(d: str) -> tuple[str, str]:
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="256M")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--tls", choices=("1.2", "1.3"), default="1.3")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tcp-once", metavar="FILE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = parse_size(args.size)
    if args.tcp_once:
        print(json.dumps(run_tcp_here(args.tcp_once, size)))
        return 0
    modes = [m for m in args.modes.split(",") if m]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    failed = dict.fromkeys(modes, 0)
    with tempfile.TemporaryDirectory(prefix="netwire-rx-") as d:
        src = os.path.join(d, "src.bin")
        with open(src, "wb") as f:
            left = size
            while left:
                n = min(left, 4 << 20)
                f.write(os.urandom(n))
                left -= n
        pki = make_pki(d)
        for _ in range(args.repeat):
            for m in modes:
                for attempt in range(RETRIES + 1):
                    try:
                        if m == "tcp":
                            runs[m].append(run_tcp(args.python, src, size))
                        else:
                            runs[m].append(run_serve(args.python, m, src, size, args.tls, pki))
                        break
                    except RuntimeError as exc:
                        failed[m] += 1
                        print(f"{m}: run failed ({exc}); again", file=sys.stderr)
                        if attempt == RETRIES:
                            raise
    gb = size / GB
    rows = []
    for m in modes:
        rs = runs[m]
        med = {
            k: statistics.median(r[k] for r in rs)
            for k in ("host_s", "nic_s", "seconds", "switches")
        }
        rows.append(
            {
                "mode": m,
                "tls": args.tls,
                "host_s_per_gb": round(med["host_s"] / gb, 3),
                "nic_s_per_gb": round(med["nic_s"] / gb, 3),
                "gbit_s": round(size * 8 / med["seconds"] / 1e9, 2),
                "switches_per_128mib": round(med["switches"] * (128 << 20) / size),
                "runs": len(rs),
                "failed_runs": failed[m],
                "rx_offload": rs[-1].get("rx", {}),
            }
        )
    tcp = next((r["host_s_per_gb"] for r in rows if r["mode"] == "tcp"), None)
    for r in rows:
        r["host_vs_tcp"] = round(r["host_s_per_gb"] / tcp, 2) if tcp else None
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    if args.json:
        print(json.dumps({"rows": rows, "loadavg": load, "python": args.python}))
        return 0
    print(
        f"real wire RX, {args.size}, TLS {args.tls}, {args.repeat} repeat(s), load {' '.join(load)}"
    )
    print(
        f"{'mode':8} {'host s/GB':>9} {'x tcp':>6} {'NIC s/GB':>9} {'Gbit/s':>7} {'cs/128MiB':>9}"
    )
    for r in rows:
        print(
            f"{r['mode']:8} {r['host_s_per_gb']:9.3f} {r['host_vs_tcp'] or 0:6.2f} "
            f"{r['nic_s_per_gb']:9.3f} {r['gbit_s']:7.2f} {r['switches_per_128mib']:9d}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
