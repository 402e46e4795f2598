"""``tlsctl doctor`` on this host and on made-up hosts.

On the host the command runs as a real process: whatever this kernel has,
its verdict must agree with an independent probe (``TCP_ULP "tls"`` on a
loopback pair, offload.kernel), exit 0/1 accordingly, print one JSON object
of numbers and booleans with --json, plain lines when piped, a table on a
terminal, and never a traceback.  The reasons and fixes for the states this
host cannot show (a loadable module without CAP_NET_ADMIN, a kernel that
refuses a TLS 1.3 rekey, an option the kernel does not know) are checked on
the pure functions that build them, from the facts a probe would return.
The real kTLS kernels (6.1 and 7.3) are in test_doctor_vm.py.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from offload.kernel import kernel_has_ktls
from offload.uapi import TLS_1_3_VERSION, CipherType
from tlsctl.cli import main
from tlsctl.doctor import diagnose, host, probes, verdict
from tlsctl.doctor.report import Check, Report

TLSCTL = Path(sys.executable).with_name("tlsctl")
HAS_KTLS = kernel_has_ktls()[0]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TLSCTL), "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _assert_typed(check: dict[str, object]) -> None:
    """JSON facts are numbers, booleans or null, not numbers in strings."""
    assert check["ok"] in (True, False, None)
    assert isinstance(check["required"], bool)
    for k, v in check.items():
        if k in ("errno", "tx_errno", "rx_errno", "value", "default", "pairs", "pairs_ok"):
            assert v is None or type(v) is int, (k, v)
        if k in ("tx", "rx", "roundtrip", "present", "cap_net_admin", "built_with_ktls"):
            assert v is None or type(v) is bool, (k, v)


def test_host_json_agrees_with_the_kernel() -> None:
    r = _run("--json")
    assert "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    assert doc["ktls_usable"] is HAS_KTLS
    assert doc["kernel_release"] == os.uname().release
    assert r.returncode == (0 if HAS_KTLS else 1)
    checks = doc["checks"]
    for c in checks.values():
        _assert_typed(c)
        if c["ok"] is False:
            assert c["reason"] and c["fix"], c
    assert checks["kernel"]["version"][:2] == [int(x) for x in os.uname().release.split(".")[:2]]
    assert checks["tcp_ulp"]["ok"] is HAS_KTLS
    assert checks["keys"]["ok"] is HAS_KTLS
    for dev in checks["nic_tls_offload"]["devices"]:
        assert type(dev["tls_hw_tx_offload"]) is bool
    assert sorted(d["name"] for d in checks["nic_tls_offload"]["devices"]) == sorted(
        os.listdir("/sys/class/net")
    )
    if not HAS_KTLS:
        # This host: the ULP is refused with ENOENT and doctor says why.
        assert checks["tcp_ulp"]["errno_name"] == "ENOENT"
        assert "ENOENT" in checks["tcp_ulp"]["reason"]
        assert (
            "CONFIG_TLS" in checks["tcp_ulp"]["fix"] or "modprobe tls" in checks["tcp_ulp"]["fix"]
        )
        assert checks["cipher_tls13_aes_gcm_128"]["ok"] is None
        assert checks["proc_net_tls_stat"]["present"] is False
        assert r.stderr.count("\n") == 1
        assert r.stderr.startswith("Error: kTLS is not usable here: ")


def test_host_plain_text_when_piped() -> None:
    r = _run()
    assert "Traceback" not in r.stderr
    assert r.returncode == (0 if HAS_KTLS else 1)
    lines = r.stdout.splitlines()
    assert lines[0] == f"kTLS usable: {'yes' if HAS_KTLS else 'no'} (Linux {os.uname().release})"
    assert "\x1b[" not in r.stdout
    assert any(line.startswith('TCP_ULP "tls": ') for line in lines)
    # Every "no" is followed by its why and fix.
    for i, line in enumerate(lines):
        if ": no  " in line:
            assert lines[i + 1].startswith("    why: ") and lines[i + 2].startswith("    fix: ")
    if not HAS_KTLS:
        assert 'TCP_ULP "tls": no  refused: ENOENT' in r.stdout


def test_host_table_on_a_terminal() -> None:
    """On a pty the answer is a rich table (box drawing), verdict in its title."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its stdout
        os.environ["COLUMNS"] = "160"
        os.execv(str(TLSCTL), [str(TLSCTL), "doctor", "--no-libraries"])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == (0 if HAS_KTLS else 1)
    assert "kTLS usable: " in text and "┃" in text and "TCP_ULP" in text
    assert "Traceback" not in text


def test_help_loads_no_library() -> None:
    code = (
        "import sys\n"
        "from tlsctl.cli import main\n"
        "assert main(['doctor', '--help']) == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith(('tlsctl.doctor', 'pyroute2',\n"
        "      'OpenSSL', 'rich'))), file=sys.stderr)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--json" in r.stdout and "Exit status: 0 when kTLS is" in " ".join(r.stdout.split())
    assert r.stderr.strip() == "[]"


def test_in_process_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json", "--no-nics", "--no-libraries"]) == (0 if HAS_KTLS else 1)
    doc = json.loads(capsys.readouterr().out)
    assert "nic_tls_offload" not in doc["checks"] and "openssl" not in doc["checks"]


# --- made-up hosts: the module's state from the file system -----------------------


def _fake_root(
    tmp_path: Path,
    release: str,
    *,
    dep: str | None = None,
    builtin: str | None = None,
    proc_modules: str | None = None,
    config: str | None = None,
) -> Path:
    moddir = tmp_path / "lib" / "modules" / release
    if dep is not None or builtin is not None:
        moddir.mkdir(parents=True)
    if dep is not None:
        (moddir / "modules.dep").write_text(dep)
    if builtin is not None:
        (moddir / "modules.builtin").write_text(builtin)
    if proc_modules is not None:
        (tmp_path / "proc").mkdir(exist_ok=True)
        (tmp_path / "proc" / "modules").write_text(proc_modules)
    if config is not None:
        (tmp_path / "proc").mkdir(exist_ok=True)
        (tmp_path / "proc" / "config.gz").write_bytes(gzip.compress(config.encode()))
    return tmp_path


DEP = "kernel/net/ipv4/tcp_bbr.ko.xz:\nkernel/net/tls/tls.ko.xz:\nkernel/net/tls_other.ko:\n"


@pytest.mark.parametrize(
    ("kw", "state", "file"),
    [
        ({"dep": DEP}, host.ModuleState.LOADABLE, "kernel/net/tls/tls.ko.xz"),
        (
            {"dep": DEP, "proc_modules": "tls 139264 0 - Live 0x0\n"},
            host.ModuleState.LOADED,
            "kernel/net/tls/tls.ko.xz",
        ),
        (
            {"dep": "kernel/net/tls_other.ko:\n", "proc_modules": "tlsx 1 0 - Live 0x0\n"},
            host.ModuleState.MISSING,
            None,
        ),
        (
            {"dep": "", "builtin": "kernel/net/tls/tls.ko\n"},
            host.ModuleState.BUILTIN,
            "kernel/net/tls/tls.ko",
        ),
        ({"config": "CONFIG_TLS=y\nCONFIG_TLS_DEVICE=y\n"}, host.ModuleState.BUILTIN, None),
        ({"config": "# CONFIG_TLS is not set\n"}, host.ModuleState.MISSING, None),
        ({}, host.ModuleState.UNKNOWN, None),
    ],
)
def test_module_state(
    tmp_path: Path, kw: dict[str, str], state: host.ModuleState, file: str | None
) -> None:
    root = _fake_root(tmp_path, "6.1.0-57-amd64", **kw)
    info = host.tls_module("6.1.0-57-amd64", root)
    assert info.state is state
    assert info.file == file


def test_kernel_config_values(tmp_path: Path) -> None:
    root = _fake_root(
        tmp_path, "6.1.0-57-amd64", config="CONFIG_TLS=m\nCONFIG_TLS_DEVICE=y\nCONFIG_TLS_TOE=n\n"
    )
    info = host.tls_module("6.1.0-57-amd64", root)
    assert (info.config, info.config_device) == ("m", "y")
    assert info.config_source == str(root / "proc" / "config.gz")


def test_kernel_version_parse() -> None:
    assert host.kernel_version("6.1.0-57-amd64") == (6, 1, 0)
    assert host.kernel_version("7.3.4+deb13-amd64") == (7, 3, 4)
    assert host.kernel_version("6.18-rc1") == (6, 18, 0)
    assert host.kernel_version("weird") is None


def test_cap_net_admin_from_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000001000\n")
    assert host.has_cap_net_admin(status) is True
    status.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    assert host.has_cap_net_admin(status) is False


# --- made-up probe answers: the reasons and fixes -----------------------------------


def _mod(state: host.ModuleState, config: str | None = None) -> host.ModuleInfo:
    return host.ModuleInfo(
        state,
        "/lib/modules/6.1.0-57-amd64",
        "kernel/net/tls/tls.ko" if state is not host.ModuleState.MISSING else None,
        config,
        None,
        None,
    )


def _enoent() -> OSError:
    return OSError(errno.ENOENT, os.strerror(errno.ENOENT))


def test_loadable_module_without_cap_net_admin_says_sudo_modprobe() -> None:
    loadable = _mod(host.ModuleState.LOADABLE)
    ulp = verdict.ulp_check(probes.UlpResult(_enoent()), loadable, cap=False)
    assert ulp.ok is False and ulp.required
    assert "CAP_NET_ADMIN" in ulp.reason and ulp.fix.startswith("sudo modprobe tls")
    mod = verdict.module_check(loadable, loadable, ulp_ok=False, cap=False)
    assert mod.ok is False and mod.detail.startswith("loadable")
    # As root the probe itself loads it: yes, and says how it got loaded.
    loaded = _mod(host.ModuleState.LOADED)
    mod = verdict.module_check(loadable, loaded, ulp_ok=True, cap=True)
    assert mod.ok is True and "TCP_ULP probe loaded it" in mod.detail
    assert mod.data["state"] == "loadable" and mod.data["state_after_probe"] == "loaded"


def test_kernel_without_config_tls() -> None:
    missing = _mod(host.ModuleState.MISSING, config="n")
    ulp = verdict.ulp_check(probes.UlpResult(_enoent()), missing, cap=True)
    assert "CONFIG_TLS" in ulp.reason and "CONFIG_TLS=m" in ulp.fix


def test_rekey_ebusy_on_61_says_614() -> None:
    busy = OSError(errno.EBUSY, os.strerror(errno.EBUSY))
    c = verdict.rekey_check(probes.RekeyResult(busy, busy, False), "6.1.0-57-amd64", "")
    assert c.ok is False and not c.required
    assert "EBUSY" in c.reason and "older than 6.14 cannot rekey TLS 1.3" in c.reason
    assert c.fix.startswith("Linux 6.14 or later")
    assert c.data["tx_errno"] == errno.EBUSY and c.data["tx"] is False
    ok = verdict.rekey_check(probes.RekeyResult(None, None, True), "7.3.4", "")
    assert ok.ok is True


def test_unknown_option_names_the_release() -> None:
    err = OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))
    [c] = verdict.option_checks(
        [probes.OptionResult("TLS_TX_MAX_PAYLOAD_LEN", err, None, 4096)], ""
    )
    assert c.ok is False and "ENOPROTOOPT" in c.reason and c.fix == "Linux 6.19 or later"
    assert c.data["errno_name"] == "ENOPROTOOPT"


def test_cipher_refusals() -> None:
    einval = OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    rows = verdict.cipher_checks(
        [
            probes.CipherResult(TLS_1_3_VERSION, CipherType.AES_CCM_128, None, einval, False),
            probes.CipherResult(TLS_1_3_VERSION, CipherType.AES_GCM_128, None, None, True),
            probes.CipherResult(
                TLS_1_3_VERSION, CipherType.CHACHA20_POLY1305, _enoent(), None, False
            ),
        ],
        "",
    )
    keys, ccm, gcm, chacha = rows
    assert keys.ok is True and keys.data == {"pairs_ok": 1, "pairs": 3}
    assert ccm.ok is False and "TLS_RX" in ccm.reason and ccm.data["rx_errno"] == errno.EINVAL
    assert gcm.ok is True
    assert "modprobe chacha20poly1305" in chacha.fix


def test_usable_needs_every_required_check() -> None:
    yes = Check("a", "a", True, "", required=True)
    no = Check("b", "b", False, "", "why", "fix", required=True)
    info = Check("c", "c", False, "", "why", "fix")
    assert Report("r", (yes, info)).usable is True
    assert Report("r", (yes, no, info)).usable is False
    assert Report("r", (yes, no)).blockers() == [no]


def test_diagnose_on_this_host_matches_probe() -> None:
    report = diagnose(nic_probe=False, library_probe=False)
    assert report.usable is HAS_KTLS
    assert report.get("tcp_ulp").ok is HAS_KTLS


def test_rekey_setup_failure_is_no_answer() -> None:
    c = verdict.rekey_check(
        probes.RekeyResult(None, None, False, setup_error=OSError("KeyUpdate lost")), "7.3.4", ""
    )
    assert c.ok is None and "KeyUpdate lost" in c.detail
