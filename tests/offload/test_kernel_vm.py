"""The real Linux kTLS as an oracle: every scenario in kernel_scenarios runs in a VM.

A session-scoped fixture boots one virtme-ng VM per kernel image with kTLS
(Debian's 6.1, CONFIG_TLS=m, and the backports 7.x that
.ci/install-kernel-vm.sh unpacks) that runs all registered scenarios and
writes a JSON file; each test here checks one scenario's entry on one
kernel.  Without vng/qemu/a kTLS kernel the tests skip with the reason (set
TLSCTL_REQUIRE_KERNEL_VM=1 to make that an error instead, e.g. in CI after
.ci/install-kernel-vm.sh).  A scenario that cannot apply to a kernel (an
interop test of TLS 1.3 rekey on 6.1) is reported skipped, with the reason.

    pytest tests/offload/test_kernel_vm.py -m kernel -v
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.helpers import kernel_scenarios, kernelvm

# The VM run has its own deadlines (boot, then every scenario's time limit):
# pytest-timeout's default must not cut it short on a loaded machine.
pytestmark = [
    pytest.mark.kernel,
    pytest.mark.timeout(kernelvm.DEFAULT_BOOT_TIMEOUT + kernel_scenarios.total_timeout() + 60),
]

KERNELS = kernelvm.find_kernels() or ["none"]

# Run as a module (the guest shares the host's file system; PYTHONPATH and the
# working directory are the repository root, see kernelvm._guest_env).
SCENARIO_MODULE = kernel_scenarios.__name__
RESULTS_NAME = "kernel-scenarios.json"


def _require_vm() -> bool:
    return os.environ.get("TLSCTL_REQUIRE_KERNEL_VM", "") not in ("", "0")


@pytest.fixture(scope="session", params=KERNELS, ids=kernelvm.kernel_id)
def kernel_results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Boot one VM of this kernel, run every scenario, return the parsed
    JSON results."""
    ok, reason = kernelvm.vm_available()
    if not ok:
        if _require_vm():
            pytest.fail(f"kernel VM required (TLSCTL_REQUIRE_KERNEL_VM) but unavailable: {reason}")
        pytest.skip(f"kernel VM unavailable: {reason}")
    workdir = tmp_path_factory.mktemp("kernelvm")
    out = workdir / RESULTS_NAME
    argv = kernelvm.python_argv("-m", SCENARIO_MODULE, str(out))
    try:
        res = kernelvm.run_in_vm(
            argv, kernel_scenarios.total_timeout(), workdir=workdir, kernel=request.param
        )
    except kernelvm.VMError as exc:
        pytest.fail(f"kernel VM run failed: {exc}", pytrace=False)
    if not out.exists():
        pytest.fail(
            f"scenario runner wrote no results (exit {res.returncode}; "
            f"modprobe rc={res.modprobe_rc} {res.modprobe_output.strip()!r})\n"
            f"--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}",
            pytrace=False,
        )
    results: dict[str, Any] = json.loads(out.read_text())
    meta = results.setdefault(kernel_scenarios.META_KEY, {"ok": False, "detail": "no _meta"})
    meta["vm"] = {
        "boot_seconds": res.boot_seconds,
        "total_seconds": round(res.total_seconds, 1),
        "returncode": res.returncode,
        "stdout": res.stdout,
        "stderr": res.stderr,
    }
    return results


def test_kernel_vm_modprobe_tls(kernel_results: dict[str, Any]) -> None:
    meta = kernel_results[kernel_scenarios.META_KEY]
    vm = meta.get("vm", {})
    assert meta["ok"], (
        f"kernel {meta.get('kernel')}: {meta['detail']}\n"
        f"--- runner stdout ---\n{vm.get('stdout', '')}\n--- runner stderr ---\n"
        f"{vm.get('stderr', '')}"
    )
    # Visible with -v / -rA: what the oracle ran on and how long it took.
    print(
        f"kernel {meta.get('kernel')}; boot {vm.get('boot_seconds')} s; "
        f"VM total {vm.get('total_seconds')} s"
    )


@pytest.mark.parametrize("name", kernel_scenarios.scenario_names())
def test_kernel_scenario(kernel_results: dict[str, Any], name: str) -> None:
    result = kernel_results.get(name)
    if result is None:
        vm = kernel_results[kernel_scenarios.META_KEY].get("vm", {})
        pytest.fail(
            f"scenario {name!r} has no result (runner crashed or VM died?)\n"
            f"--- runner stdout ---\n{vm.get('stdout', '')}\n"
            f"--- runner stderr ---\n{vm.get('stderr', '')}",
            pytrace=False,
        )
    if not result["ok"]:
        pytest.fail(f"kernel scenario {name!r} failed:\n{result['detail']}", pytrace=False)
    if result.get("skipped"):
        pytest.skip(f"{name}: {result['skipped']}")
