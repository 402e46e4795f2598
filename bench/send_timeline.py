"""Where ``tlsctl send``'s wall time goes: a timeline from exec to exit.

Runs ``tlsctl send ARGS...`` in this process with a timestamp at each phase
(on stderr at exit): interpreter start-up (from ``/proc/self/stat``), the
CLI and the send path imported, the handshake, the transfer, how much of
the file the SHA-256 thread had hashed when the transfer started (it starts
before the TLS stack loads), the close and its verdict, the digest's wait.
``bench/pair.py`` gives the totals side by side with curl; this says what
is inside ``rest``.  The phases are found by wrapping the transfer
library's functions, so this script follows their names.

Usage: python bench/send_timeline.py FILE -connect HOST:PORT -k --offload sw --json
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import os
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

_T0 = time.time()


def _since_exec() -> float:
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    return up - start_ticks / os.sysconf("SC_CLK_TCK")


_BASE = time.perf_counter() - (_since_exec() - (time.time() - _T0))
_MARKS: list[tuple[str, float]] = [("interpreter up", 0.0)]


def mark(name: str) -> None:
    _MARKS.append((name, time.perf_counter() - _BASE))


def _dump() -> None:
    mark("exit")
    prev = 0.0
    for name, t in sorted(_MARKS, key=lambda m: m[1]):
        print(f"{t:8.3f} s (+{t - prev:6.3f})  {name}", file=sys.stderr)
        prev = t


def _wrap(obj: Any, name: str, label: str) -> None:
    orig: Callable[..., Any] = getattr(obj, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        mark(f"{label} start")
        try:
            return orig(*args, **kwargs)
        finally:
            mark(f"{label} end")

    setattr(obj, name, timed)


def _instrument() -> None:
    from tlsctl.session import channel
    from tlsctl.transfer import filehash, sender

    mark("send path imported")
    _wrap(sender, "run_handshake", "handshake")
    _wrap(sender, "establish", "layer set up")
    _wrap(sender._Transfer, "_send_regular", "transfer")
    _wrap(sender._Transfer, "_confirm", "close verdict")
    _wrap(sender._Transfer, "_summary", "summary")
    _wrap(filehash.FileHasher, "digest", "waiting for the digest")
    _wrap(channel.KtlsChannel, "close_notify", "close_notify")
    _wrap(sender, "await_tcp_close", "TCP close")
    send_regular = sender._Transfer._send_regular

    def transfer(self: Any) -> None:
        hasher = self.given_hasher
        done = hasher._done >> 20 if hasher is not None else 0
        mark(f"hashed before the transfer: {done} MiB")
        send_regular(self)

    sender._Transfer._send_regular = transfer  # type: ignore[method-assign]
    run = filehash.FileHasher._run

    def hash_run(self: Any) -> None:
        run(self)
        mark("hash thread done")

    filehash.FileHasher._run = hash_run  # type: ignore[method-assign]


class _OnImport(importlib.abc.MetaPathFinder):
    """Instrument the send path right after it is imported (the timeline
    must not import it earlier than ``send`` does)."""

    name = "tlsctl.transfer.sender"

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_instrument(module: ModuleType) -> None:
            exec_module(module)
            sys.modules[fullname] = module
            _instrument()

        loader.exec_module = exec_then_instrument  # type: ignore[method-assign]
        return spec


def main() -> None:
    atexit.register(_dump)
    mark("timeline running")
    sys.meta_path.insert(0, _OnImport())
    from tlsctl.cli import main as cli_main

    mark("CLI imported")
    status = cli_main(["send", *sys.argv[1:]])
    mark(f"command returned {status}")
    sys.exit(status)


if __name__ == "__main__":
    main()
