"""The main job on the real kernel: ``send``/``serve --offload kernel`` in the kTLS VM.

``tlsctl send --offload kernel`` to ``openssl s_server`` (an independent
stack: what it received is hashed) and to ``tlsctl serve --offload kernel``
(the hash of the file it saved), for TLS 1.2 and 1.3, AES-GCM and
ChaCha20-Poly1305, every byte through the host kernel's kTLS.  Registered as
a scenario of the VM oracle (``kernel_scenarios``), so it shares the boot
with the other kernel tests and runs on each kernel the oracle boots, in CI
too.  One ``serve`` takes all four connections: inside the emulated VM a
Python start costs more than a transfer.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.helpers.peers import make_pki, openssl_server, run_tlsctl, sha, tlsctl_server

KERNEL_CASES = [
    ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"),
    ("-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"),
    ("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"),
]

SLOW = float(os.environ.get("TLSCTL_VM_SLOW") or 300.0)
"""Seconds one ``tlsctl`` run may take under software emulation (a guard
against a hang; a run takes a few seconds on an idle machine, and more than
300 with four other emulated VMs on two cores: ``TLSCTL_VM_SLOW``)."""


def send_and_serve_on_the_kernel() -> str:
    with tempfile.TemporaryDirectory() as d:
        outdir = Path(d)
        pki = make_pki(outdir)
        data = outdir / "data.bin"
        data.write_bytes(os.urandom((1 << 20) + 16385))
        want = sha(data)
        save = outdir / "save"
        save.mkdir()
        sent: list[dict[str, object]] = []
        with tlsctl_server(
            "-cert",
            str(pki.cert),
            "-key",
            str(pki.key),
            "--offload",
            "kernel",
            "--save-dir",
            str(save),
            "-naccept",
            str(len(KERNEL_CASES)),
            startup=SLOW,
        ) as srv:
            for vflag, cflag, suite in KERNEL_CASES:
                send = [
                    "send",
                    str(data),
                    "-CAfile",
                    str(pki.ca),
                    "--offload",
                    "kernel",
                    "--json",
                    vflag,
                    cflag,
                    suite,
                ]
                out = outdir / f"s_server-{suite}.out"
                with (
                    out.open("wb") as f,
                    openssl_server(pki.cert, pki.key, f, vflag, cflag, suite, startup=SLOW) as (
                        proc,
                        port,
                    ),
                ):
                    r = run_tlsctl(*send, "-connect", f"localhost:{port}", timeout=SLOW)
                    proc.wait(60)
                assert r.returncode == 0, f"{suite} to s_server: {r.stderr[-500:]}"
                summary = json.loads(r.stdout)
                assert summary["offload"] == "kernel", summary
                assert sha(out) == summary["sha256"] == want, f"{suite} to s_server: {summary}"
                r = run_tlsctl(*send, "-connect", f"localhost:{srv.port}", timeout=SLOW)
                assert r.returncode == 0, f"{suite} to serve: {r.stderr[-500:]}"
                summary = json.loads(r.stdout)
                assert summary["offload"] == "kernel" and summary["sha256"] == want, summary
                sent.append(summary)
            records = srv.records(timeout=SLOW)
        conns = [x for x in records if x.get("event") == "connection"]
        assert len(conns) == len(KERNEL_CASES), records
        for rec, summary in zip(conns, sent, strict=True):  # serve takes them in turn
            assert rec["ok"] and rec["offload"] == "kernel", rec
            assert rec["cipher"] == summary["cipher"], (rec, summary)
            assert rec["sha256"] == sha(Path(rec["file"])) == want, rec
    suites = ", ".join(s for _v, _c, s in KERNEL_CASES)
    return f"send -> s_server and send -> serve, --offload kernel, hashes equal: {suites}"


Decorator = Callable[[Callable[[], object]], Callable[[], object]]


def register(scenario: Callable[..., Decorator]) -> None:
    scenario("cli_send_serve_offload_kernel", timeout=2 * SLOW * len(KERNEL_CASES))(
        send_and_serve_on_the_kernel
    )


__all__ = ["KERNEL_CASES", "register"]
