"""``tlsctl send --loopback``: the whole path with no preparation at all.

A ``serve``-style server runs in a thread of the same process on
127.0.0.1 with an ephemeral certificate; the client trusts exactly that
certificate (verification stays on), sends through the kTLS layer, and the
server hashes what it received, so one command shows the handshake, the
key handoff and both record-layer directions agreeing byte for byte.

Nothing is left on disk whatever ends the run (SIGTERM included): the
certificate to trust is handed over in memory and the random payload lives
in a file that is unlinked as soon as it is open.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from cryptography import x509

from tlsctl.certs import ephemeral_server_cert
from tlsctl.control import Registrar
from tlsctl.offloadmode import DeviceSpec, Offload, receiver_offload
from tlsctl.server.handlers import hash_sink
from tlsctl.server.server import Server, ServerConfig
from tlsctl.signals import StopSignals
from tlsctl.tlsconf import TlsOptions, server_context
from tlsctl.transfer.sender import NO_HOOKS, ClientOptions, SendHooks, send_to


def _drop(_msg: str) -> None:
    pass


def send_loopback(
    file: str | None,
    size: int,
    opts: ClientOptions,
    stop: StopSignals,
    hooks: SendHooks = NO_HOOKS,
    listener: socket.socket | None = None,
) -> tuple[dict[str, Any], str]:
    """``send --loopback``: serve in a thread, send ``file`` (None: ``size``
    random bytes) to it, compare the hashes.

    Returns the sender's summary with the server's hash and offload added
    and ``match``; when the hashes differ, ``ok`` is False and ``error``
    says why.  Second: the target, for the summary's title.  Raises what
    :func:`~tlsctl.transfer.sender.send_to` raises.

    ``listener``: an unbound socket for the server (``--wire netns``: made
    in the peer namespace, bound to its address there; ``hooks.connect``
    reaches it); the summary then has the server's CPU time too
    (``server_cpu_seconds``).
    """
    with contextlib.ExitStack() as stack:
        src: str | BinaryIO = file if file is not None else stack.enter_context(random_file(size))
        port, cert, server = stack.enter_context(
            loopback_server(
                opts.tls,
                opts.offload,
                opts.device,
                registrar=hooks.registrar,
                warn=hooks.warn,
                listener=listener,
            )
        )
        to = dataclasses.replace(opts, insecure=False, trust=cert)
        if listener is None:
            host = "127.0.0.1"
            result = send_to(src, "localhost", port, to, stop, hooks)
        else:
            host = str(listener.getsockname()[0])
            # The ephemeral certificate names localhost, wherever the server listens.
            to = dataclasses.replace(to, servername="localhost")
            result = send_to(src, host, port, to, stop, hooks)
    rec = server.records[0] if server.records else {}
    result["server_sha256"] = rec.get("sha256")
    result["server_offload"] = rec.get("offload")
    if "host_cpu_seconds" in rec:
        result["server_cpu_seconds"] = rec["host_cpu_seconds"]
    result["match"] = rec.get("sha256") == result["sha256"]
    if not result["match"]:
        result.update(ok=False, error=rec.get("error") or "the server received different bytes")
    return result, f"built-in server on {host}:{port}"


@contextlib.contextmanager
def loopback_server(
    opts: TlsOptions,
    offload: Offload,
    device: DeviceSpec | None = None,
    registrar: Registrar | None = None,
    warn: Callable[[str], None] = _drop,
    listener: socket.socket | None = None,
) -> Iterator[tuple[int, x509.Certificate, Server]]:
    """Yield (port, the certificate to trust, server) for one connection
    (registered with ``registrar``, the sender's control server).  Only
    the server's problems are told (``warn``), its connection's failure
    included; what it received is in ``server.records``.

    ``listener``: an unbound TCP socket to listen on (``--wire netns``:
    one made in the peer namespace, bound to its address), instead of
    127.0.0.1; then the record also has the connection thread's CPU time
    (``host_cpu_seconds``), so the sender's can be told apart from it."""
    ck = ephemeral_server_cert()
    ctx = server_context(dataclasses.replace(opts, cafile=None), cert=ck.cert, key=ck.key)
    count_cpu = listener is not None
    if listener is None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = int(listener.getsockname()[1])
    # The built-in receiver decrypts in software; a NIC offload is the sender's.
    server_offload = receiver_offload(offload)
    config = ServerConfig(offload=server_offload, naccept=1, timeout=60, count_cpu=count_cpu)

    def on_record(rec: dict[str, Any], head: str) -> None:
        if not rec.get("ok"):
            warn(f"{head}: error: {rec.get('error')}")

    server = Server(
        listener, ctx, hash_sink, config, registrar=registrar, on_record=on_record, warn=warn
    )
    thread = threading.Thread(target=server.serve_forever, name="loopback-serve", daemon=True)
    thread.start()
    try:
        yield port, ck.cert, server
        thread.join(30)
    finally:
        server.stop.set()


@contextlib.contextmanager
def random_file(size: int) -> Iterator[BinaryIO]:
    """An open file of ``size`` random bytes (the default payload), with no
    name: ``TemporaryFile`` unlinks it at once (O_TMPFILE where the file
    system has it), so no signal or crash can leave it behind."""
    with tempfile.TemporaryFile(prefix="tlsctl-payload-") as f:
        block = os.urandom(1 << 20)
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
        f.flush()
        yield f
