"""``tlsctl doctor`` against real kTLS kernels: one VM boot per kernel image.

Every kernel image with a tls module (Debian 12's 6.1 and, when
.ci/install-kernel-vm.sh fetched it, the backports kernel) boots once under
virtme-ng (tests/helpers/kernelvm.py) and, in that one boot:

1. ``rmmod tls`` (the VM runner loaded it), then doctor as root: its
   TCP_ULP probe makes the kernel load the module; everything the kernel
   has is "yes": every version x cipher takes TX and RX keys and carries a
   record, the SOL_TLS options, /proc/net/tls_stat counting the probes; TLS
   1.3 rekey "no" (EBUSY) before 6.14 and "yes" from it on;
   TLS_TX_MAX_PAYLOAD_LEN from 6.19 on;
2. doctor piped (plain text) with the module now loaded;
3. ``rmmod tls`` again, then doctor without CAP_NET_ADMIN (``setpriv
   --bounding-set -net_admin``, still root for the files): the kernel may
   not autoload the module, so kTLS is not usable: exit 1, "loadable, not
   loaded", fix ``sudo modprobe tls``;
4. ``openssl s_server -WWW`` with ``Options = KTLS`` serving curl: the
   kernel counts OpenSSL's TX key, so doctor's "OpenSSL kTLS: yes" is real.

Without vng/qemu/a kTLS kernel the tests skip with the reason
(TLSCTL_REQUIRE_KERNEL_VM=1 makes that a failure).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from offload.stats import parse_proc_tls_stat
from tests.helpers import kernelvm
from tlsctl.doctor.host import kernel_version

GUEST_TIMEOUT = 1800.0  # TCG: one doctor run took 6-12 min with 4 VMs on 2 cores
pytestmark = [
    pytest.mark.kernel,
    pytest.mark.timeout(kernelvm.DEFAULT_BOOT_TIMEOUT + GUEST_TIMEOUT + 120),
]

TLSCTL = Path(sys.executable).with_name("tlsctl")
KERNELS = kernelvm.find_kernels()
REKEY_SINCE = (6, 14)
MAX_PAYLOAD_SINCE = (6, 19)

GUEST = """\
W={w}
T={tlsctl}
# The module as a fresh boot has it: not loaded (the VM runner loaded it).
rmmod tls > "$W/rmmod.out" 2>&1; echo $? > "$W/rmmod.rc"
"$T" doctor --json > "$W/root.json" 2> "$W/root.err"; echo $? > "$W/root.rc"
"$T" doctor --no-nics --no-libraries > "$W/text.txt" 2> "$W/text.err"; echo $? > "$W/text.rc"
rmmod tls > "$W/rmmod2.out" 2>&1; echo $? > "$W/rmmod2.rc"
setpriv --bounding-set -net_admin --inh-caps -net_admin -- "$T" doctor --json --no-nics \\
    --no-libraries > "$W/nocap.json" 2> "$W/nocap.err"; echo $? > "$W/nocap.rc"
# Is doctor's "OpenSSL kTLS: yes" real?  openssl s_server -WWW with
# `Options = KTLS` in its config serves a file to curl; the kernel counts
# the TX key OpenSSL handed it.
modprobe tls
cd "$W" || exit 1
cat > ktls.cnf <<'CNF'
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Options = KTLS
CNF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout key.pem -out cert.pem -days 1 > req.out 2>&1
head -c 300000 /dev/urandom > file.bin
cat /proc/net/tls_stat > stat.before
(sleep 120 | OPENSSL_CONF="$W/ktls.cnf" timeout 150 openssl s_server -accept 127.0.0.1:4433 \
    -WWW -cert cert.pem -key key.pem -naccept 1 > s_server.out 2>&1) &
curl -sk --retry 30 --retry-connrefused --retry-delay 2 -o got.bin \
    https://127.0.0.1:4433/file.bin > curl.out 2>&1; echo $? > curl.rc
cat /proc/net/tls_stat > stat.after
"""


def _require_vm() -> bool:
    return os.environ.get("TLSCTL_REQUIRE_KERNEL_VM", "") not in ("", "0")


def run_doctor_guest(
    kernel: str, workdir: Path, boot_timeout: float = kernelvm.DEFAULT_BOOT_TIMEOUT
) -> dict[str, Any]:
    """Boot ``kernel`` once, run GUEST in it; what each step left in ``workdir``."""
    script = workdir / "doctor-guest.sh"
    script.write_text(GUEST.format(w=workdir, tlsctl=TLSCTL))
    res = kernelvm.run_in_vm(
        ["/bin/sh", str(script)],
        GUEST_TIMEOUT,
        workdir=workdir,
        kernel=kernel,
        boot_timeout=boot_timeout,
    )

    def read(name: str) -> str:
        p = workdir / name
        return p.read_text() if p.exists() else ""

    out: dict[str, Any] = {
        "kernel": res.kernel,
        "rc": res.returncode,
        "boot_seconds": res.boot_seconds,
        "total_seconds": res.total_seconds,
    }
    for run in ("nocap", "root", "text"):
        out[f"{run}_rc"] = int(read(f"{run}.rc").strip() or -1)
        out[f"{run}_err"] = read(f"{run}.err")
    out["rmmod_rc"] = int(read("rmmod.rc").strip() or -1)
    out["rmmod2_rc"] = int(read("rmmod2.rc").strip() or -1)
    out["text"] = read("text.txt")
    out["curl_rc"] = int(read("curl.rc").strip() or -1)
    out["curl_out"] = read("curl.out") + read("s_server.out")
    out["same_file"] = (workdir / "got.bin").exists() and (workdir / "got.bin").read_bytes() == (
        workdir / "file.bin"
    ).read_bytes()
    out["stat_before"] = parse_proc_tls_stat(read("stat.before"))
    out["stat_after"] = parse_proc_tls_stat(read("stat.after"))
    for run in ("nocap", "root"):
        raw = read(f"{run}.json")
        try:
            out[run] = json.loads(raw)
        except ValueError:
            raise AssertionError(
                f"{run}: doctor printed no JSON (exit {out[f'{run}_rc']}):\n{raw}\n"
                f"--- stderr ---\n{out[f'{run}_err']}"
            ) from None
    return out


@pytest.fixture(scope="module", params=KERNELS or ["none"], ids=kernelvm.kernel_id)
def vm_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Boot ``request.param`` once; the three doctor runs' outputs."""
    ok, reason = kernelvm.vm_available()
    if not ok or not KERNELS:
        if _require_vm():
            pytest.fail(f"kernel VM required (TLSCTL_REQUIRE_KERNEL_VM) but unavailable: {reason}")
        pytest.skip(f"kernel VM unavailable: {reason}")
    try:
        out = run_doctor_guest(request.param, tmp_path_factory.mktemp("doctorvm"))
    except (kernelvm.VMError, AssertionError) as exc:
        pytest.fail(f"kernel VM run failed: {exc}", pytrace=False)
    print(
        f"kernel {out['kernel']}: boot {out['boot_seconds']} s, total {out['total_seconds']:.0f} s"
    )
    return out


def _version(run: dict[str, Any]) -> tuple[int, int, int]:
    ver = kernel_version(run["root"]["kernel_release"])
    assert ver is not None
    return ver


def test_without_cap_net_admin_the_module_is_not_loaded(vm_run: dict[str, Any]) -> None:
    assert vm_run["rmmod2_rc"] == 0
    doc = vm_run["nocap"]
    assert vm_run["nocap_rc"] == 1, vm_run["nocap_err"]
    assert doc["ktls_usable"] is False
    mod = doc["checks"]["tls_module"]
    assert (mod["state"], mod["ok"], mod["cap_net_admin"]) == ("loadable", False, False)
    assert mod["fix"].startswith("sudo modprobe tls")
    ulp = doc["checks"]["tcp_ulp"]
    assert ulp["errno_name"] == "ENOENT" and "CAP_NET_ADMIN" in ulp["reason"]
    assert vm_run["nocap_err"].startswith("Error: kTLS is not usable here: ")
    assert "Traceback" not in vm_run["nocap_err"]


def test_as_root_everything_the_kernel_has_is_yes(vm_run: dict[str, Any]) -> None:
    assert vm_run["rmmod_rc"] == 0
    doc = vm_run["root"]
    assert vm_run["root_rc"] == 0, vm_run["root_err"]
    assert doc["ktls_usable"] is True
    assert doc["kernel_release"] == vm_run["kernel"]
    c = doc["checks"]
    # The probe loaded the module, as the kernel does for a CAP_NET_ADMIN process.
    assert (
        c["tls_module"]["state"],
        c["tls_module"]["state_after_probe"],
        c["tls_module"]["ok"],
    ) == ("loadable", "loaded", True)
    assert c["tcp_ulp"]["ok"] is True
    assert c["keys"]["pairs_ok"] == c["keys"]["pairs"] == 8
    for version in ("12", "13"):
        for cipher in ("aes_gcm_128", "aes_gcm_256", "aes_ccm_128", "chacha20_poly1305"):
            row = c[f"cipher_tls{version}_{cipher}"]
            assert (row["ok"], row["tx"], row["rx"], row["roundtrip"]) == (True,) * 4, row
    assert c["option_tls_tx_zerocopy_ro"]["ok"] is True
    assert c["option_tls_tx_zerocopy_ro"]["value"] == 1
    assert c["option_tls_rx_expect_no_pad"]["ok"] is True
    stat = c["proc_net_tls_stat"]
    assert stat["present"] is True
    # Every cipher probe, the rekey and two option probes installed a TX key.
    assert stat["counters"]["TlsTxSw"] >= 8 + 1 + 2
    assert stat["counters"]["TlsRxSw"] >= 8 + 1 + 1
    assert c["nic_tls_offload"]["ok"] is False  # virtio and lo have no TLS offload
    assert any(d["name"] == "lo" for d in c["nic_tls_offload"]["devices"])
    assert c["openssl"]["built_with_ktls"] is True


def test_rekey_by_kernel_version(vm_run: dict[str, Any]) -> None:
    c = vm_run["root"]["checks"]
    rekey = c["rekey_tls13"]
    if _version(vm_run)[:2] >= REKEY_SINCE:
        assert (rekey["ok"], rekey["tx"], rekey["rx"], rekey["roundtrip"]) == (True,) * 4
        assert c["proc_net_tls_stat"]["counters"]["TlsTxRekeyOk"] >= 1
        assert c["proc_net_tls_stat"]["counters"]["TlsRxRekeyOk"] >= 1
    else:
        assert rekey["ok"] is False
        assert rekey["tx_errno"] == 16  # EBUSY
        assert "older than 6.14 cannot rekey TLS 1.3" in rekey["reason"]


def test_max_payload_len_by_kernel_version(vm_run: dict[str, Any]) -> None:
    opt = vm_run["root"]["checks"]["option_tls_tx_max_payload_len"]
    if _version(vm_run)[:2] >= MAX_PAYLOAD_SINCE:
        assert (opt["ok"], opt["default"], opt["value"]) == (True, 16384, 4096)
    else:
        assert (opt["ok"], opt["errno_name"]) == (False, "ENOPROTOOPT")
        assert opt["fix"] == "Linux 6.19 or later"


def test_plain_text_with_the_module_loaded(vm_run: dict[str, Any]) -> None:
    assert vm_run["text_rc"] == 0, vm_run["text_err"]
    lines = vm_run["text"].splitlines()
    assert lines[0] == f"kTLS usable: yes (Linux {vm_run['kernel']})"
    assert any(line.startswith("tls module: yes  loaded") for line in lines)
    rekey = next(i for i, line in enumerate(lines) if line.startswith("TLS 1.3 rekey: "))
    if _version(vm_run)[:2] >= REKEY_SINCE:
        assert lines[rekey].startswith("TLS 1.3 rekey: yes")
    else:
        assert lines[rekey].startswith("TLS 1.3 rekey: no")
        assert "older than 6.14" in lines[rekey + 1]


def test_openssl_ktls_claim_is_real(vm_run: dict[str, Any]) -> None:
    """doctor says the system OpenSSL was built with kTLS: with ``Options =
    KTLS`` its s_server hands the TX key to the kernel (TlsTxSw counts it) and
    curl gets the file intact."""
    assert vm_run["root"]["checks"]["openssl"]["ok"] is True
    assert vm_run["curl_rc"] == 0, vm_run["curl_out"]
    assert vm_run["same_file"]
    before, after = vm_run["stat_before"], vm_run["stat_after"]
    assert after["TlsTxSw"] - before["TlsTxSw"] >= 1, (before, after)
