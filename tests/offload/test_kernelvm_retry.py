"""The kernel-VM helper boots again when the emulated kernel panics at boot.

Under QEMU TCG on a loaded 2-core machine the guest kernel once panicked
before user space (``Oops: int3`` in ``sched_clock_cpu``), which failed every
VM test of that kernel.  These tests pin the retry rule without booting a
VM: only a panic before the command started is retried, and only once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import kernelvm

PANIC_CONSOLE = (
    "[    3.1] Oops: int3\n[    3.2] Kernel panic - not syncing: Fatal exception in interrupt\n"
)


def _result() -> kernelvm.VMResult:
    return kernelvm.VMResult(
        ["true"],
        0,
        "",
        "",
        console="",
        modprobe_rc=0,
        modprobe_output="",
        kernel="test",
        boot_seconds=1.0,
        total_seconds=2.0,
    )


def _fake(monkeypatch: pytest.MonkeyPatch, outcomes: list[Exception | None]) -> list[int]:
    calls: list[int] = []

    def once(*args: Any, **kwargs: Any) -> kernelvm.VMResult:
        calls.append(1)
        outcome = outcomes[len(calls) - 1]
        if outcome is not None:
            raise outcome
        return _result()

    monkeypatch.setattr(kernelvm, "_run_in_vm_once", once)
    return calls


def test_boot_panic_is_booted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake(monkeypatch, [kernelvm.VMError("boot", PANIC_CONSOLE, guest_started=False), None])
    res = kernelvm.run_in_vm(["true"], 10)
    assert res.returncode == 0
    assert len(calls) == 2


def test_second_boot_panic_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    panic = kernelvm.VMError("boot", PANIC_CONSOLE, guest_started=False)
    calls = _fake(monkeypatch, [panic, panic, None])
    with pytest.raises(kernelvm.VMError, match="boot"):
        kernelvm.run_in_vm(["true"], 10)
    assert len(calls) == kernelvm.BOOT_ATTEMPTS == 2


@pytest.mark.parametrize(
    "error",
    [
        kernelvm.VMError("after start", PANIC_CONSOLE, guest_started=True),
        kernelvm.VMError("no boot", "[    9.0] just slow\n", guest_started=False),
        kernelvm.VMUnavailable("no qemu"),
    ],
    ids=["panic-after-start", "timeout-without-panic", "unavailable"],
)
def test_other_failures_are_not_retried(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    calls = _fake(monkeypatch, [error, None])
    with pytest.raises(type(error)):
        kernelvm.run_in_vm(["true"], 10)
    assert len(calls) == 1


def test_panic_on_the_console_stops_the_boot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """qemu sits on a panicked guest: the helper must not wait out the boot timeout."""
    fake_vng = tmp_path / "vng"
    fake_vng.write_text(f"#!/bin/sh\nprintf '{PANIC_CONSOLE}'\nexec sleep 600\n")
    fake_vng.chmod(0o755)
    monkeypatch.setattr(kernelvm, "vm_available", lambda: (True, "fake"))
    monkeypatch.setattr(kernelvm, "find_vng", lambda: str(fake_vng))
    monkeypatch.setattr(kernelvm, "find_kernel", lambda: "/boot/vmlinuz-fake")
    with pytest.raises(kernelvm.VMError) as caught:
        kernelvm.run_in_vm(["true"], 10, workdir=tmp_path / "vm", boot_timeout=600)
    assert "panicked while booting" in str(caught.value)
    assert caught.value.boot_panic
