"""``tlsctl send FILE``: one file to a TLS server through the kTLS layer.

The handshake runs in pyOpenSSL (:mod:`tlsctl.handshake`), the keys go to
``offload.KTLSSocket`` and the file goes out through its ``sendfile`` (the
file is never read into memory).  The end is a close_notify and the wait for
the peer to close: only then do we know the server got every byte, so the
time and throughput include it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import sys
import threading
import time
from typing import Any, BinaryIO

import click

from tlsctl.commands._channel import (
    ChannelError,
    ChannelTimeout,
    KtlsChannel,
    OpenSSLChannel,
    device_report,
    establish,
    exact_reads,
)
from tlsctl.commands._options import (
    device_spec_from,
    key_update_option,
    parse_hostport,
    tls_options,
    tls_options_from,
)
from tlsctl.commands._output import emit_json, emit_summary, human_rate, info, warn
from tlsctl.commands._tlsconf import ConfigError, client_context
from tlsctl.control import ControlServer, control_socket_option
from tlsctl.handshake import HandshakeError, HandshakeResult, KeylogFile, run_handshake

_STREAM_CHUNK = 256 * 1024
_FILE_CHUNK = 8 << 20  # progress granularity; sendfile still frames 16 KiB records


class _Hasher:
    """SHA-256 of what was sent; regular files are hashed after the transfer
    (from the page cache) so hashing does not slow the measured part."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def file(self, f: BinaryIO, count: int) -> None:
        f.seek(0)
        left = count
        while left > 0:
            chunk = f.read(min(1 << 20, left))
            if not chunk:
                break
            self.h.update(chunk)
            left -= len(chunk)


def _is_ip(host: str) -> bool:
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(fam, host)
            return True
        except OSError:
            continue
    return False


@click.command()
@click.argument("file", required=False, type=click.Path(allow_dash=True, dir_okay=False))
@click.option("-connect", "--connect", "connect", metavar="HOST:PORT",
              help="Server to send to.")
@click.option("--loopback", is_flag=True,
              help="Start a server in this process (127.0.0.1, ephemeral certificate, "
                   "verified) and send to it; it checks the SHA-256 of what arrived.")
@click.option("--size", default=64 << 20, show_default=True, type=click.IntRange(min=0),
              help="With --loopback and no FILE: bytes of random data to send.")
@click.option("-servername", "--servername", "servername", metavar="NAME",
              help="SNI name and the name checked in the certificate (default: HOST).")
@click.option("-cert", "--cert", "cert", metavar="PEM", type=click.Path(dir_okay=False),
              help="Client certificate, for servers that ask for one.")
@click.option("-key", "--key", "key", metavar="PEM", type=click.Path(dir_okay=False),
              help="Private key of -cert (default: the -cert file).")
@click.option("-k", "--insecure", is_flag=True,
              help="Do NOT verify the server certificate (anyone can intercept).")
@click.option("--timeout", default=30.0, show_default=True, type=float,
              help="Seconds to wait for connect, handshake, and each network step.")
@key_update_option
@tls_options
@control_socket_option
def send(file: str | None, connect: str | None, loopback: bool, size: int,
         servername: str | None, insecure: bool, timeout: float, **kw: Any) -> None:
    """Send FILE (- for stdin) to a TLS server through the kTLS layer.

    Verifies the server certificate against the system trust store (or
    -CAfile); prints bytes, time, throughput, SHA-256, TLS version, cipher,
    offload mode and the record sequence numbers handed to the layer.

    \b
    Examples:
      openssl s_server -quiet -accept 4433 -cert c.pem -key k.pem > got.bin
      tlsctl send big.iso -connect localhost:4433 -CAfile ca.pem
      tlsctl send --loopback              # no set-up: 64 MiB to a built-in server
      tlsctl send --loopback --offload sim-nic --faults reorder=0.05,drop=0.05,seed=7
      tlsctl send big.iso -connect localhost:4433 -tls1_3 --key-update-every 1M
    """
    if loopback == bool(connect):
        raise click.UsageError("give exactly one of -connect HOST:PORT and --loopback")
    if file is None and not loopback:
        raise click.UsageError("missing FILE (use - for stdin)")
    kw["device"] = device_spec_from(kw)
    ControlServer.start(kw.pop("control_socket", None))  # for inspect-context
    try:
        if loopback:
            result = _run_loopback(file, size, servername, timeout, kw)
        else:
            assert connect is not None
            host, port = parse_hostport(connect)
            result = _run(file or "-", host, port, servername, insecure, timeout, kw)
            _report(result, f"{host}:{port}", kw)
    except (ConfigError, HandshakeError, ChannelError) as exc:
        raise click.ClickException(str(exc)) from None


def _report(result: dict[str, Any], target: str, kw: dict[str, Any]) -> None:
    if kw["as_json"]:
        emit_json(result)
    elif not kw["quiet"]:
        emit_summary(f"tlsctl send → {target}", result)


def _run_loopback(file: str | None, size: int, servername: str | None, timeout: float,
                  kw: dict[str, Any]) -> dict[str, Any]:
    """--loopback: serve in a thread, send to it, compare the hashes."""
    from tlsctl.commands._loopback import loopback_server, random_file

    opts = tls_options_from(kw)
    with contextlib.ExitStack() as stack:
        path = file if file is not None else stack.enter_context(random_file(size))
        port, ca, server = stack.enter_context(
            loopback_server(opts, kw["offload"], kw["device"])
        )
        result = _run(path, "localhost", port, servername, False, timeout,
                      {**kw, "cafile": ca})
    rec = server.records[0] if server.records else {}
    result["server_sha256"] = rec.get("sha256")
    result["server_offload"] = rec.get("offload")
    result["match"] = rec.get("sha256") == result["sha256"]
    _report(result, f"built-in server on 127.0.0.1:{port}", kw)
    if not result["match"]:
        raise ChannelError(rec.get("error") or "the server received different bytes")
    return result


def _open(file: str) -> tuple[BinaryIO, int | None]:
    """The input and its size (None: a stream, e.g. stdin or a pipe)."""
    if file == "-":
        f: BinaryIO = sys.stdin.buffer
    else:
        try:
            f = open(file, "rb")  # noqa: SIM115 - closed by the caller
        except OSError as exc:
            raise ConfigError(f"cannot open {file}: {exc.strerror}") from None
    st = os.fstat(f.fileno())
    return f, (st.st_size if stat.S_ISREG(st.st_mode) else None)


def _run(file: str, host: str, port: int, servername: str | None, insecure: bool,
         timeout: float, kw: dict[str, Any]) -> dict[str, Any]:
    quiet: bool = kw["quiet"]
    opts = tls_options_from(kw)
    if insecure:
        warn("WARNING: -k/--insecure: the server certificate is NOT verified; "
             "anyone on the path can read and change this transfer")
    ctx = client_context(opts, verify=not insecure, cert=kw.get("cert"), key=kw.get("key"))
    keylog = KeylogFile(kw["keylogfile"]) if kw.get("keylogfile") else None
    f, size = _open(file)
    try:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ChannelError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        # Records are written whole; without NODELAY a small final record
        # (close_notify) waits for a delayed ACK (~40 ms on Linux).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sni = servername or (None if _is_ip(host) else host)
        try:
            res = run_handshake(sock, ctx, "client", server_name=sni,
                                verify_host=None if insecure else (servername or host),
                                keylog=keylog, timeout=timeout,
                                exact=exact_reads(kw["offload"]))
            sock.settimeout(timeout)
            chan = establish(sock, res, kw["offload"], warn, kw["device"])
        except BaseException:
            sock.close()
            raise
        if kw.get("key_update_every"):
            if not (isinstance(chan, KtlsChannel) and res.is_tls13):
                chan.close()
                raise ChannelError(f"--key-update-every needs TLS 1.3 through the kTLS layer "
                                   f"(this connection: {res.version_name}, offload {chan.mode})")
            chan.key_update_every = kw["key_update_every"]
        info(f"connected to {host}:{port}: {res.version_name} {res.cipher_name}, "
             f"offload {chan.mode}", quiet=quiet or kw["as_json"])
        if kw["verbose"]:
            _verbose(res, insecure)
        try:
            return _transfer(chan, res, f, size, kw)
        finally:
            chan.close()
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def _verbose(res: HandshakeResult, insecure: bool) -> None:
    """-v: who we talk to and the numbers handed to the layer (never keys)."""
    peer = res.conn.get_peer_certificate(as_cryptography=True)
    if peer is not None:
        state = "NOT verified (-k)" if insecure else "verified"
        info(f"server certificate: {peer.subject.rfc4514_string()} "
             f"(issuer {peer.issuer.rfc4514_string()}), {state}")
    info(f"handshake {res.seconds * 1000:.1f} ms; record sequence numbers at handoff: "
         f"tx {res.tx_seq}, rx {res.rx_seq}; {len(res.leftover)} bytes read past the "
         "handshake handed to the layer")


def _transfer(chan: KtlsChannel | OpenSSLChannel, res: HandshakeResult, f: BinaryIO,
              size: int | None, kw: dict[str, Any]) -> dict[str, Any]:
    hasher = _Hasher()
    # The kTLS layer reads and writes from two threads (as a socket does);
    # the OpenSSL fallback's Connection is not thread-safe: it reads after.
    drain = _Drain(chan) if isinstance(chan, KtlsChannel) else None
    start = time.perf_counter()
    if drain is not None:
        drain.start()
    try:
        if size is None:
            sent = 0
            while chunk := f.read(_STREAM_CHUNK):
                hasher.h.update(chunk)
                chan.send_all(chunk)
                sent += len(chunk)
        else:
            sent = _send_regular(chan, f, size, show=not (kw["quiet"] or kw["as_json"]))
        chan.close_notify()
    except ChannelError:
        # The server said why it hung up (a fatal alert) before we hit the
        # closed socket: that is the line worth showing.
        if drain is not None:
            drain.join(2)
            if drain.error is not None and not isinstance(drain.error, ChannelTimeout):
                raise drain.error from None
        raise
    if drain is None:
        _await_close(chan)
    else:
        drain.finish(drain.chan.k.gettimeout())
    seconds = time.perf_counter() - start
    tx_end, rx_end = chan.live_seqs()  # after close_notify and the peer's records
    if size is not None:
        hasher.file(f, sent)
    offload = chan.mode if kw["offload"] != "auto" else f"auto ({chan.mode})"
    out: dict[str, Any] = {
        "bytes": sent,
        "seconds": round(seconds, 6),
        "throughput": human_rate(sent, seconds),
        "sha256": hasher.h.hexdigest(),
        "version": res.version_name,
        "cipher": res.cipher_name,
        "offload": offload,
        "handshake_ms": round(res.seconds * 1000, 2),
        "tx_seq_at_handoff": res.tx_seq,
        "rx_seq_at_handoff": res.rx_seq,
        "tx_seq_at_end": tx_end,
        "rx_seq_at_end": rx_end,
    }
    if isinstance(chan, KtlsChannel):
        out["session_tickets_ignored"] = chan.tickets
        out["key_updates_sent"] = chan.key_updates_sent
        out["key_updates_received"] = chan.key_updates
        if drain is not None:
            out["bytes_received"] = drain.received  # what the server sent (discarded)
        out.update(device_report(chan))
    return out


def _send_regular(chan: KtlsChannel | OpenSSLChannel, f: BinaryIO, size: int,
                  show: bool) -> int:
    """sendfile in large steps; a progress bar on a terminal."""
    if not (show and sys.stderr.isatty()) or size < _FILE_CHUNK:
        return chan.send_file(f, 0, size)
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    sent = 0
    with Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task("send", total=size)
        while sent < size:
            n = chan.send_file(f, sent, min(_FILE_CHUNK, size - sent))
            if n == 0:
                break
            sent += n
            bar.update(task, completed=sent)
    return sent


class _Drain(threading.Thread):
    """Reads what the server sends while the file goes out (kTLS layer).

    A server that answers as it reads (``serve --echo``, ``s_server`` echoing
    typed lines) would otherwise fill its send buffer, stop reading, and
    stall the transfer until ``--timeout``.  What it sends is counted and
    discarded (TLS 1.3 tickets and KeyUpdates are handled by the channel);
    its close_notify, EOF or fatal alert ends the thread.  A read timeout
    while the file is still going out is not an error: the server may have
    nothing to say.
    """

    def __init__(self, chan: KtlsChannel) -> None:
        super().__init__(name="send-drain", daemon=True)
        self.chan = chan
        self.sending = True
        self.received = 0
        self.error: ChannelError | None = None

    def run(self) -> None:
        buf = memoryview(bytearray(1 << 16))
        while True:
            try:
                n = self.chan.recv_into(buf)
            except ChannelTimeout as exc:
                if self.sending:
                    continue
                self.error = exc
                return
            except ChannelError as exc:
                self.error = exc
                return
            if not n:
                return
            self.received += n

    def finish(self, timeout: float | None) -> None:
        """After our close_notify: wait for the server to close (or time out)."""
        self.sending = False
        self.join(None if timeout is None else timeout + 5)
        if self.is_alive() or isinstance(self.error, ChannelTimeout):
            raise ChannelError("the server did not close the connection after close_notify")
        if self.error is not None:
            raise self.error


def _await_close(chan: KtlsChannel | OpenSSLChannel) -> None:
    """Read until the peer closes: its close_notify (or EOF) ends the transfer.

    Data the server sends is discarded; TLS 1.3 tickets are skipped by the
    channel.  This is the OpenSSL fallback's way (one thread); the kTLS
    layer reads concurrently (``_Drain``).
    """
    try:
        while chan.recv(1 << 16):
            pass
    except TimeoutError:
        raise ChannelError("the server did not close the connection after close_notify") from None
    except ChannelError as exc:
        if "timed out" in str(exc):
            raise ChannelError(
                "the server did not close the connection after close_notify"
            ) from None
        raise
