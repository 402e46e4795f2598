"""The real wire: two network namespaces joined only through the NIC process.

::

    sender netns                NIC process                 receiver netns
    10.213.0.1 nic0 (TUN) <-> [egress: offload] [back] <-> nic0 (TUN) 10.213.0.2

Each namespace has one TUN link, ``nic0``, owned by the NIC process
(``offload.netwire.nic``), an address and a host route to the other side
through that link: the only way between them.  The kernels on both sides
are real TCP stacks (segmentation, TSO, retransmission, SACK, ACKs); the
NIC process sees the sender's GSO frames and forwards the receiver's ACKs.

:class:`NetnsWire` builds it all (namespaces and addresses through
pyroute2's netlink, the TUN links by the NIC process itself) and tears it
all down however the ``with`` block ends: the NIC process is stopped (its
TUN links die with its fds), the namespaces are removed, the control
directory deleted.  If the owner itself is killed (SIGKILL), the NIC gets
SIGTERM from the kernel (``PR_SET_PDEATHSIG``; tied to the *thread* that
entered the wire, so enter it from a thread that outlives the block) and
removes the namespaces and the directory on its way out.  It needs root
(CAP_SYS_ADMIN for namespaces, CAP_NET_ADMIN for TUN and addresses) and
/dev/net/tun; without them
:class:`WireUnavailable` says so in one line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Literal

from pyroute2 import IPRoute, netns

from offload.netwire.faults import WireFaults
from offload.netwire.nic import TUN_NAME
from offload.netwire.tun import TUN_PATH

Side = Literal["tx", "rx"]
ADDRS: dict[str, str] = {"tx": "10.213.0.1", "rx": "10.213.0.2"}
"""Sender and receiver addresses (each namespace is private: any two wires
may use the same ones)."""
_ns_lock = threading.Lock()


class WireUnavailable(RuntimeError):
    """The real wire cannot be built here (no root, no /dev/net/tun, ...)."""


def unavailable_reason() -> str | None:
    """Why a real wire cannot be built on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "the real wire (--wire netns) needs root (network namespaces and TUN devices)"
    if not os.path.exists(TUN_PATH):
        return f"the real wire (--wire netns) needs {TUN_PATH}, which this machine lacks"
    return None


class NetnsWire:
    """Sender and receiver namespaces, and the NIC process between them."""

    def __init__(
        self, driver: str = "sim-nic", *, faults: str = "", startup_timeout: float = 20.0
    ) -> None:
        """``faults``: a ``offload.netwire.faults.WireFaults`` spec applied
        by the NIC process to frames in both directions (ValueError here if
        it does not parse)."""
        WireFaults.parse(faults)
        self.faults = faults
        self.driver = driver
        self.startup_timeout = startup_timeout
        tag = f"tlsctl-{os.getpid()}-{secrets.token_hex(3)}"
        self.ns: dict[str, str] = {"tx": f"{tag}-tx", "rx": f"{tag}-rx"}
        self.rundir = ""
        self.control = ""
        self.nic: subprocess.Popen[bytes] | None = None
        self._made: list[str] = []

    # -- lifetime ---------------------------------------------------------------

    def __enter__(self) -> NetnsWire:
        reason = unavailable_reason()
        if reason:
            raise WireUnavailable(reason)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _build(self) -> None:
        self.rundir = tempfile.mkdtemp(prefix="tlsctl-wire-")  # mode 0700
        self.control = os.path.join(self.rundir, "control")
        for side in ("tx", "rx"):
            netns.create(self.ns[side])
            self._made.append(self.ns[side])
        self.nic = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "offload.netwire.nic",
                "--tx-ns",
                self.ns["tx"],
                "--rx-ns",
                self.ns["rx"],
                "--control",
                self.control,
                "--driver",
                self.driver,
                "--faults",
                self.faults,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._wait_ready()
        for side, peer in (("tx", "rx"), ("rx", "tx")):
            with IPRoute(netns=self.ns[side]) as ipr:
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.link("set", index=lo, state="up")
                idx = ipr.link_lookup(ifname=TUN_NAME)[0]
                ipr.addr("add", index=idx, address=ADDRS[side], prefixlen=32)
                ipr.link("set", index=idx, state="up")
                ipr.route("add", dst=ADDRS[peer], dst_len=32, oif=idx, scope=253)

    def _wait_ready(self) -> None:
        nic = self.nic
        assert nic is not None and nic.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        os.set_blocking(nic.stdout.fileno(), False)
        while time.monotonic() < deadline:
            chunk = nic.stdout.read()
            if chunk:
                line += chunk
            if b"ready" in line:
                return
            if nic.poll() is not None:
                err = (nic.stderr.read() if nic.stderr else b"").decode(errors="replace")
                first = err.strip().splitlines()[-1] if err.strip() else f"status {nic.returncode}"
                raise WireUnavailable(f"the NIC process failed to start: {first}")
            time.sleep(0.02)
        raise WireUnavailable(f"the NIC process did not start in {self.startup_timeout:g} s")

    def close(self) -> None:
        """Stop the NIC, remove the namespaces and the control directory.

        Idempotent; every step runs even if an earlier one failed."""
        nic, self.nic = self.nic, None
        if nic is not None:
            if nic.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(nic.pid, signal.SIGTERM)
                try:
                    nic.wait(5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(nic.pid, signal.SIGKILL)
                    nic.wait(5)
            for stream in (nic.stdout, nic.stderr):
                if stream is not None:
                    stream.close()
        while self._made:
            name = self._made.pop()
            with contextlib.suppress(OSError):
                netns.remove(name)
        if self.rundir:
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = ""

    # -- using it ---------------------------------------------------------------

    @property
    def nic_pid(self) -> int:
        if self.nic is None:
            raise RuntimeError("the wire is not up")
        return self.nic.pid

    def addr(self, side: Side) -> str:
        return ADDRS[side]

    @contextlib.contextmanager
    def inside(self, side: Side) -> Iterator[None]:
        """Run the block in ``side``'s namespace (this thread only): sockets
        created there belong to that namespace for good."""
        with _ns_lock:
            netns.pushns(self.ns[side])
            try:
                yield
            finally:
                netns.popns()

    def socket(self, side: Side, *args: Any) -> socket.socket:
        """A socket in ``side``'s namespace (default: TCP/IPv4)."""
        with self.inside(side):
            return socket.socket(*(args or (socket.AF_INET, socket.SOCK_STREAM)))

    def argv(self, side: Side, cmd: list[str]) -> list[str]:
        """``cmd`` run inside ``side``'s namespace (``ip netns exec``)."""
        return ["ip", "netns", "exec", self.ns[side], *cmd]

    def nic_cpu_seconds(self) -> float:
        """User + system CPU time of the NIC process so far (from /proc)."""
        with open(f"/proc/{self.nic_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


__all__ = ["ADDRS", "NetnsWire", "WireUnavailable", "unavailable_reason"]
