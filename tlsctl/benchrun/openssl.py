"""The ``openssl`` mode: ``openssl s_server -WWW`` sends the file, curl fetches it.

A reference from outside this project: OpenSSL's own record layer serving
the same file.  The CPU counted is s_server's (``/proc/PID/stat``); the
receiver's is curl's; the wall time is what curl saw after its handshake.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from typing import IO

from tlsctl.benchrun.errors import BenchError
from tlsctl.benchrun.job import Job, more
from tlsctl.benchrun.modes import TLS_MAX_RECORD
from tlsctl.benchrun.procs import child_setup, children_cpu, proc_cpu
from tlsctl.benchrun.results import Result


def _commands(job: Job) -> tuple[list[str], list[str]]:
    """The s_server and curl command lines (curl without its URL)."""
    cmd = [
        "openssl",
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-WWW",
        "-cert",
        job.cert_pem,
        "-key",
        job.key_pem,
        "-naccept",
        "1000000",
    ]
    if job.record_size != TLS_MAX_RECORD:
        cmd += ["-max_send_frag", str(job.record_size)]
    curl = [
        "curl",
        "-sS",
        "-k",
        "--http1.0",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{time_appconnect} %{time_total}\\n",
    ]
    if job.opts.tls1_2:
        cmd.append("-tls1_2")
        curl += ["--tlsv1.2", "--tls-max", "1.2"]
    if job.opts.tls1_3:
        cmd.append("-tls1_3")
        curl.append("--tlsv1.3")
    if job.opts.cipher:
        cmd += ["-cipher", job.opts.cipher]
    if job.opts.ciphersuites:
        cmd += ["-ciphersuites", job.opts.ciphersuites]
    return cmd, curl


def openssl_www(job: Job) -> Result:
    """One stream: a fresh s_server, curl fetching the file until done."""
    directory, name = os.path.split(job.path)
    cmd, curl = _commands(job)
    # stdout to a file: s_server writes per connection, a pipe could fill up.
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    srv = subprocess.Popen(
        cmd,
        cwd=directory,
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=child_setup(os.getpid()),
    )
    try:
        port = _accept_port(srv, log)
        url = f"https://127.0.0.1:{port}/{name}"
        sent = rounds = 0
        cpu = wire = recv_cpu = 0.0
        t0 = time.monotonic()
        while more(job, t0, rounds):
            rounds += 1
            c0 = proc_cpu(srv.pid)
            ru0 = children_cpu()
            out = subprocess.run(
                [*curl, url],
                capture_output=True,
                text=True,
                timeout=600,
                preexec_fn=child_setup(os.getpid()),
            )
            if out.returncode != 0:
                raise BenchError(f"openssl: curl failed: {out.stderr.strip()}")
            cpu += proc_cpu(srv.pid) - c0
            recv_cpu += children_cpu() - ru0
            got_s, appconnect, total = out.stdout.split()
            got = int(got_s)
            if got != job.size:
                raise BenchError(f"openssl: curl got {got} of {job.size} bytes")
            sent += got
            wire += float(total) - float(appconnect)
        # Wall time is what curl saw after its handshake, summed over fetches.
        return Result(job.mode, sent, t0, t0 + wire, cpu, receiver_cpu=recv_cpu, confirmed="count")
    finally:
        srv.kill()
        srv.wait()
        log.close()


def _accept_port(srv: subprocess.Popen[bytes], log: IO[bytes]) -> int:
    """The port from s_server's ``ACCEPT host:port`` line (within 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log.seek(0)
        for raw in log.read().splitlines():
            line = raw.decode(errors="replace").strip()
            if line.startswith("ACCEPT"):
                return int(line.rpartition(":")[2])
        if srv.poll() is not None:
            break
        time.sleep(0.02)
    log.seek(0)
    text = log.read().decode(errors="replace").strip().replace("\n", " ")
    raise BenchError(f"openssl s_server did not start: {text[:300]}")
