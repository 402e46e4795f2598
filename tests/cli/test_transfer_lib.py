"""``tlsctl.transfer`` in-process: ``send``'s transfer as a library.

What the command shows comes through the callbacks (status, -v details,
progress, the control server's registration) and nothing is printed; the
peer is ``openssl s_server`` writing what it got to a file, so the hash
compared is an independent stack's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.peers import Pki, make_pki, openssl_server, sha
from tlsctl.control import Inspectable, Registration
from tlsctl.signals import StopSignals
from tlsctl.tlsconf import TlsOptions
from tlsctl.transfer import ClientOptions, SendHooks, TransferFailed, send_to
from tlsctl.transfer.filehash import start_early
from tlsctl.transfer.loopback import send_loopback

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Told:
    """Everything the library told its caller."""

    def __init__(self) -> None:
        self.status: list[str] = []
        self.detail: list[str] = []
        self.warn: list[str] = []
        self.totals: list[int | None] = []
        self.done: list[int] = []
        self.registered: list[tuple[str, dict[str, Any]]] = []
        self.unregistered = 0

    @contextlib.contextmanager
    def progress(self, total: int | None) -> Iterator[Callable[[int], None]]:
        self.totals.append(total)
        yield self.done.append

    def register(self, conn: Inspectable, *, label: str, extra: dict[str, Any]) -> Registration:
        self.registered.append((label, extra))
        told = self

        class Handle(Registration):
            def close(self) -> None:
                told.unregistered += 1

        return Handle(None, 0)

    def hooks(self) -> SendHooks:
        return SendHooks(
            status=self.status.append,
            detail=self.detail.append,
            warn=self.warn.append,
            progress=self.progress,
            registrar=self,
        )


def test_send_to_s_server_tells_through_the_hooks_and_prints_nothing(
    pki: Pki, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    told = Told()
    opts = ClientOptions(tls=TlsOptions(tls1_3=True, cafile=str(pki.ca)), offload="sw", timeout=20)
    out = tmp_path / "got.bin"
    with (
        out.open("wb") as f,
        openssl_server(pki.cert, pki.key, f) as (proc, port),
        StopSignals() as stop,
    ):
        result = send_to(str(src), "localhost", port, opts, stop, told.hooks())
        proc.wait(10)
    assert result["ok"] is True and result["bytes_sent"] == 3 << 20
    assert result["sha256"] == sha(out) == sha(src)
    assert result["offload"] == "sw" and result["version"] == "TLSv1.3"
    assert told.status == [f"connected to localhost:{port}: TLSv1.3 {result['cipher']}, offload sw"]
    assert any(d.startswith("server certificate: CN=localhost") for d in told.detail)
    assert any("record sequence numbers at handoff: tx 0, rx 0" in d for d in told.detail)
    assert told.warn == []
    # One progress context for the regular file, an update per 1 MiB step.
    assert told.totals == [3 << 20] and told.done == [1 << 20, 2 << 20, 3 << 20]
    # Registered with the lent registrar while it lived, closed at the end.
    assert told.registered == [("client", {"cipher_suite": result["cipher"]})]
    assert told.unregistered == 1
    assert capfd.readouterr() == ("", "")


def test_send_to_an_unconfirmed_transfer_raises_with_the_facts(pki: Pki, tmp_path: Path) -> None:
    """s_server -naccept 1 whose stdin is closed ends the connection at once:
    the library raises TransferFailed (INCOMPLETE) with what was sent."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(4 << 20))
    opts = ClientOptions(tls=TlsOptions(cafile=str(pki.ca)), offload="sw", timeout=10)
    with (
        (tmp_path / "got.bin").open("wb") as f,
        openssl_server(pki.cert, pki.key, f) as (proc, port),
        StopSignals() as stop,
    ):
        assert proc.stdin is not None
        proc.stdin.close()  # s_server: EOF on stdin ends the connection
        with pytest.raises(TransferFailed) as failed:
            send_to(str(src), "localhost", port, opts, stop)
    assert failed.value.status == 3
    assert failed.value.facts["offload"] == "sw"
    assert 0 <= failed.value.facts["bytes_sent"] <= 4 << 20
    assert str(failed.value).startswith("transfer incomplete: sent ")


def test_send_loopback_in_process(capfd: pytest.CaptureFixture[str]) -> None:
    told = Told()
    with StopSignals() as stop:
        result, target = send_loopback(
            None, 1 << 20, ClientOptions(offload="sw"), stop, told.hooks()
        )
    assert result["ok"] is True and result["match"] is True
    assert result["server_sha256"] == result["sha256"] and result["server_offload"] == "sw"
    assert target.startswith("built-in server on 127.0.0.1:")
    # Both ends registered (the built-in server's connection too), both closed.
    assert sorted(label for label, _ in told.registered) == ["client", "server"]
    assert told.unregistered == 2
    assert told.warn == [] and capfd.readouterr() == ("", "")


def test_send_loopback_of_a_file(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    with StopSignals() as stop:
        result, _ = send_loopback(str(src), 0, ClientOptions(offload="sim-nic"), stop)
    assert result["match"] is True and result["bytes_sent"] == 100_000
    assert result["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert result["offload"] == "sim-nic" and result["server_offload"] == "sw"
    assert result["device_counters"]["tx_tls_encrypted_bytes"] > 0


def test_send_to_uses_the_hasher_it_is_given(pki: Pki, tmp_path: Path) -> None:
    """A hash started by the caller (``send`` starts it before the handshake)
    is the one reported, and is left running for the caller to stop."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom((2 << 20) + 5))
    opts = ClientOptions(tls=TlsOptions(cafile=str(pki.ca)), offload="sw", timeout=20)
    started = start_early(str(src))
    assert started is not None
    f, hasher = started
    digests: list[int] = []
    real_digest = hasher.digest

    def digest(sent: int) -> str:
        digests.append(sent)
        return real_digest(sent)

    hasher.digest = digest  # type: ignore[method-assign]
    with (
        f,
        (tmp_path / "got.bin").open("wb") as out,
        openssl_server(pki.cert, pki.key, out) as (proc, port),
        StopSignals() as stop,
    ):
        result = send_to(f, "localhost", port, opts, stop, hasher=hasher)
        proc.wait(10)
        assert not f.closed  # the caller's file
    assert digests == [(2 << 20) + 5]
    assert result["sha256"] == sha(tmp_path / "got.bin") == sha(src)
    hasher.stop()


# --- the reading thread when the sender closes under it -------------------------------


class _TornDown:
    """A channel whose reader blocks until the test lets it go, then fails
    the way a layer torn down under a read does (not a ChannelError)."""

    def __init__(self) -> None:
        import threading

        self.closed = False
        self.peer_closed = False
        self.reading = threading.Event()
        self.release = threading.Event()

    def recv_into(self, _buf: memoryview) -> int:
        self.reading.set()
        self.release.wait(10)
        raise ValueError("operation on a closed record layer")


@pytest.mark.parametrize("closed_first", [True, False])
def test_drain_thread_quiet_when_the_sender_closed_under_it(closed_first: bool) -> None:
    """``send``'s reading thread (``confirm.Drain``) may be inside a read when
    the sender gives up (a send timed out, the peer reset) and closes the
    channel: whatever the torn-down layer raises then is not the peer's doing
    and must not print a traceback beside send's one error line (it did,
    now and then, in ``test_server_that_stops_reading``).  An exception while
    the channel is still open is a bug and still reaches the thread's hook."""
    import threading
    from typing import cast

    from tlsctl.session.channel import KtlsChannel
    from tlsctl.transfer.confirm import Drain

    chan = _TornDown()
    seen: list[BaseException | None] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value)
    try:
        drain = Drain(cast(KtlsChannel, chan))
        drain.start()
        assert chan.reading.wait(10)
        chan.closed = closed_first
        chan.release.set()
        drain.join(10)
    finally:
        threading.excepthook = old_hook
    assert not drain.is_alive()
    if closed_first:
        assert seen == []
    else:
        assert len(seen) == 1 and isinstance(seen[0], ValueError)
