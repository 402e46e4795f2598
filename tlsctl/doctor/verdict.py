"""``tlsctl doctor``'s verdict: run the probes, turn each answer into a
:class:`~tlsctl.doctor.report.Check` with the reason and the fix for a "no".

Order matters: the module's state is read *before* the ``TCP_ULP`` probe,
because that probe itself makes the kernel load a missing ``tls`` module
(``request_module("tcp-ulp-tls")``) when the caller has CAP_NET_ADMIN, as it
would for any such application.  ``doctor`` therefore never runs
``modprobe``: the probe loads the module exactly when a real kTLS user
would get it loaded, and a "no" says when it would not (no CAP_NET_ADMIN:
``sudo modprobe tls``).
"""

from __future__ import annotations

import errno
from pathlib import Path

from offload.stats import parse_proc_tls_stat
from offload.uapi import TLS_1_2_VERSION, TLS_1_3_VERSION, TLS_VERSIONS, CipherType
from tlsctl.doctor import host, libs, nics, probes
from tlsctl.doctor.report import Check, JsonValue, Report, errno_fields, errno_text

PROC_TLS_STAT = Path("/proc/net/tls_stat")
REKEY_SINCE = (6, 14)
_SHOWN_COUNTERS = (
    "TlsCurrTxSw",
    "TlsCurrRxSw",
    "TlsTxSw",
    "TlsRxSw",
    "TlsTxDevice",
    "TlsRxDevice",
    "TlsDecryptError",
    "TlsTxRekeyOk",
    "TlsRxRekeyOk",
)
# What each cipher needs from the kernel's crypto API (the module to load).
_CRYPTO_MODULE = {
    CipherType.AES_GCM_128: "gcm",
    CipherType.AES_GCM_256: "gcm",
    CipherType.AES_CCM_128: "ccm",
    CipherType.CHACHA20_POLY1305: "chacha20poly1305",
}
# SOL_TLS options: the Linux release that added each.
_OPTION_SINCE = {
    "TLS_TX_ZEROCOPY_RO": "5.19",
    "TLS_RX_EXPECT_NO_PAD": "6.0",
    "TLS_TX_MAX_PAYLOAD_LEN": "6.19",
}


def version_name(version: int) -> str:
    return {TLS_1_2_VERSION: "1.2", TLS_1_3_VERSION: "1.3"}[version]


def kernel_check(release: str, mod: host.ModuleInfo) -> Check:
    ver = host.kernel_version(release)
    config = ""
    if mod.config_source:
        config = (
            f"; CONFIG_TLS={mod.config or 'n'}, CONFIG_TLS_DEVICE="
            f"{mod.config_device or 'n'} ({mod.config_source})"
        )
    return Check(
        "kernel",
        "kernel",
        True,
        f"Linux {release}{config}",
        data={
            "release": release,
            "version": list(ver) if ver else None,
            "config_tls": mod.config,
            "config_tls_device": mod.config_device,
        },
    )


def module_fix(mod: host.ModuleInfo, cap: bool) -> tuple[str, str]:
    """(reason, fix) for a kernel whose ``tls`` ULP is not there."""
    if mod.state is host.ModuleState.LOADABLE and not cap:
        return (
            "the tls module is not loaded, and the kernel loads it on demand only "
            "for a process with CAP_NET_ADMIN",
            "sudo modprobe tls  (at every boot: echo tls > /etc/modules-load.d/tls.conf)",
        )
    if mod.state is host.ModuleState.LOADABLE:
        return (
            "the tls module is installed but did not load (see dmesg)",
            "modprobe tls  (and read its error)",
        )
    if mod.state is host.ModuleState.MISSING:
        why = (
            f"this kernel was built without kTLS (CONFIG_TLS is not set in {mod.config_source})"
            if mod.config == "n"
            else f"this kernel has no tls module ({mod.modules_dir} has none)"
        )
        return why, (
            "boot a kernel built with CONFIG_TLS=m or =y (e.g. Debian's linux-image-amd64)"
        )
    return (
        f"no {mod.modules_dir} here, so no tls module can be loaded (a container, or a "
        "kernel without modules) and the kernel has no tls built in",
        "boot a kernel with CONFIG_TLS=m or =y (in a container: modprobe tls on the host)",
    )


def module_check(before: host.ModuleInfo, after: host.ModuleInfo, ulp_ok: bool, cap: bool) -> Check:
    data: dict[str, JsonValue] = {
        "state": before.state.value,
        "state_after_probe": after.state.value,
        "file": before.file,
        "cap_net_admin": cap,
    }
    title = "tls module"
    where = f" ({before.modules_dir}/{before.file})" if before.file else ""
    s = host.ModuleState
    if before.state is s.BUILTIN:
        return Check("tls_module", title, True, "built in (CONFIG_TLS=y)", data=data)
    if before.state is s.LOADED:
        return Check("tls_module", title, True, f"loaded{where}", data=data)
    if ulp_ok and before.state is s.LOADABLE:
        return Check(
            "tls_module",
            title,
            True,
            f"loadable{where}; the TCP_ULP probe loaded it (the kernel loads it on "
            "demand for a process with CAP_NET_ADMIN)",
            data=data,
        )
    if ulp_ok:
        return Check(
            "tls_module",
            title,
            True,
            "not visible here, but the kernel has the tls ULP (loaded outside this "
            "file system, e.g. by the host of a container)",
            data=data,
        )
    reason, fix = module_fix(before, cap)
    detail = {
        s.LOADABLE: f"loadable{where}, not loaded",
        s.MISSING: "missing",
        s.UNKNOWN: f"unknown: no {before.modules_dir}",
    }[before.state]
    return Check("tls_module", title, False, detail, reason, fix, data=data)


def ulp_check(result: probes.UlpResult, mod: host.ModuleInfo, cap: bool) -> Check:
    title = 'TCP_ULP "tls"'
    if result.error is None:
        return Check(
            "tcp_ulp",
            title,
            True,
            "attaches to a loopback TCP socket",
            required=True,
            data=errno_fields(None),
        )
    if result.error.errno == errno.ENOENT:
        reason, fix = module_fix(mod, cap)
        reason = f'no "tls" ULP in the kernel (ENOENT): {reason}'
    else:
        reason = f'setsockopt(SOL_TCP, TCP_ULP, "tls") failed with {errno_text(result.error)}'
        fix = "check the kernel log (dmesg); a seccomp or LSM policy may forbid it"
    return Check(
        "tcp_ulp",
        title,
        False,
        f"refused: {errno_text(result.error)}",
        reason,
        fix,
        required=True,
        data=errno_fields(result.error),
    )


def _cipher_key(version: int, cipher: CipherType) -> str:
    return f"cipher_tls{version_name(version).replace('.', '')}_{cipher.name.lower()}"


def cipher_checks(results: list[probes.CipherResult] | None, why_not: str) -> list[Check]:
    checks: list[Check] = []
    if results is None:
        checks.append(
            Check(
                "keys",
                "TX/RX keys",
                False,
                "not probed",
                why_not,
                "see TCP_ULP above",
                required=True,
                data={"pairs_ok": 0, "pairs": 2 * len(CipherType)},
            )
        )
        for version in TLS_VERSIONS:
            for cipher in CipherType:
                checks.append(
                    Check(
                        _cipher_key(version, cipher),
                        f"TLS {version_name(version)} {cipher.name}",
                        None,
                        "not probed",
                        data={"tx": None, "rx": None, "roundtrip": None},
                    )
                )
        return checks
    good = [r for r in results if r.ok]
    summary_ok = bool(good)
    checks.append(
        Check(
            "keys",
            "TX/RX keys",
            summary_ok,
            f"{len(good)} of {len(results)} version x cipher pairs take TX and RX keys and "
            "carry a record",
            "" if summary_ok else "the kernel refused every key",
            "" if summary_ok else "see the rows below",
            required=True,
            data={"pairs_ok": len(good), "pairs": len(results)},
        )
    )
    for r in results:
        data: dict[str, JsonValue] = {
            "version": version_name(r.version),
            "cipher": r.cipher.name,
            "tx": r.tx_error is None,
            "rx": r.rx_error is None,
            "roundtrip": r.roundtrip,
            "tx_errno": None if r.tx_error is None else r.tx_error.errno,
            "rx_errno": None if r.rx_error is None else r.rx_error.errno,
        }
        title = f"TLS {version_name(r.version)} {r.cipher.name}"
        if r.ok:
            checks.append(
                Check(
                    _cipher_key(r.version, r.cipher),
                    title,
                    True,
                    "TX and RX keys taken; a record went through",
                    data=data,
                )
            )
            continue
        err = r.tx_error or r.rx_error
        side = "TLS_TX" if r.tx_error else "TLS_RX"
        if err is None:
            reason, fix = (
                "the kernel took both keys but the record did not come back intact",
                "report it: this is a kernel bug",
            )
        elif err.errno in (errno.ENOENT, errno.ENOPKG, errno.ELIBBAD):
            mod = _CRYPTO_MODULE[r.cipher]
            reason = (
                f"setsockopt({side}) = {errno_text(err)}: the kernel's crypto API has no "
                f"{mod} AEAD for it"
            )
            fix = f"modprobe {mod}  (or a kernel with its CONFIG_CRYPTO_* option)"
        elif err.errno == errno.EINVAL:
            reason = (
                f"setsockopt({side}) = {errno_text(err)}: this kernel does not know "
                f"{r.cipher.name} for TLS {version_name(r.version)}"
            )
            fix = "a newer kernel, or another cipher"
        else:
            reason, fix = f"setsockopt({side}) = {errno_text(err)}", "check the kernel log"
        detail = (
            "TX "
            + ("yes" if r.tx_error is None else "no")
            + ", RX "
            + ("yes" if r.rx_error is None else "no")
        )
        checks.append(
            Check(_cipher_key(r.version, r.cipher), title, False, detail, reason, fix, data=data)
        )
    return checks


def rekey_check(result: probes.RekeyResult | None, release: str, why_not: str) -> Check:
    title = "TLS 1.3 rekey"
    if result is None:
        return Check(
            "rekey_tls13",
            title,
            None,
            "not probed",
            why_not,
            data={"tx": None, "rx": None, "roundtrip": None},
        )
    if result.setup_error is not None:
        return Check(
            "rekey_tls13",
            title,
            None,
            f"cannot tell: the TLS 1.3 pair before the rekey failed "
            f"({errno_text(result.setup_error)})",
            data={"tx": None, "rx": None, "roundtrip": None},
        )
    data: dict[str, JsonValue] = {
        "tx": result.tx_error is None,
        "rx": result.rx_error is None,
        "roundtrip": result.roundtrip,
        "tx_errno": None if result.tx_error is None else result.tx_error.errno,
        "rx_errno": None if result.rx_error is None else result.rx_error.errno,
    }
    if result.ok:
        return Check(
            "rekey_tls13",
            title,
            True,
            "a second setsockopt(TLS_TX/TLS_RX) after a KeyUpdate installs the next "
            "key; a record went through under it",
            data=data,
        )
    err = result.tx_error or result.rx_error
    ver = host.kernel_version(release)
    if err is not None and err.errno == errno.EBUSY:
        since = ".".join(map(str, REKEY_SINCE))
        older = ver is not None and ver[:2] < REKEY_SINCE
        reason = f"a second setsockopt(TLS_TX) = {errno_text(err)}: " + (
            f"Linux older than {since} cannot rekey TLS 1.3"
            if older
            else "this kernel cannot rekey TLS 1.3"
        )
        fix = (
            f"Linux {since} or later; until then a TLS 1.3 connection that sends or "
            "receives a KeyUpdate must keep its record layer in user space "
            "(tlsctl: --offload sw)"
        )
    elif err is not None:
        reason, fix = f"rekey refused: {errno_text(err)}", "check the kernel log"
    else:
        reason, fix = "the record after the rekey did not arrive intact", "report it"
    tx = "yes" if result.tx_error is None else "no"
    rx = "yes" if result.rx_error is None else "no"
    return Check("rekey_tls13", title, False, f"TX {tx}, RX {rx}", reason, fix, data=data)


def option_checks(results: list[probes.OptionResult] | None, why_not: str) -> list[Check]:
    out: list[Check] = []
    names = list(_OPTION_SINCE) if results is None else [r.name for r in results]
    for i, name in enumerate(names):
        key = "option_" + name.lower()
        if results is None:
            out.append(
                Check(
                    key,
                    name,
                    None,
                    "not probed",
                    why_not,
                    data={"value": None, "default": None, **errno_fields(None)},
                )
            )
            continue
        r = results[i]
        data: dict[str, JsonValue] = {
            "value": r.value,
            "default": r.default,
            **errno_fields(r.error),
        }
        if r.ok:
            out.append(
                Check(
                    key,
                    name,
                    True,
                    f"set to {r.wanted}, read back {r.value} (default {r.default})",
                    data=data,
                )
            )
        elif r.error is not None and r.error.errno == errno.ENOPROTOOPT:
            since = _OPTION_SINCE[name]
            out.append(
                Check(
                    key,
                    name,
                    False,
                    "unknown to this kernel",
                    f"setsockopt(SOL_TLS, {name}) = {errno_text(r.error)}: added in Linux {since}",
                    f"Linux {since} or later",
                    data=data,
                )
            )
        else:
            what = errno_text(r.error) if r.error else f"read back {r.value}"
            out.append(
                Check(
                    key,
                    name,
                    False,
                    f"refused: {what}",
                    f"setsockopt(SOL_TLS, {name}) = {what}",
                    "check the kernel log",
                    data=data,
                )
            )
    return out


def tls_stat_check(path: Path, mod_ok: bool) -> Check:
    title = "/proc/net/tls_stat"
    try:
        counters = parse_proc_tls_stat(path.read_text())
    except OSError as exc:
        reason = (
            "it appears when the tls module is loaded"
            if not mod_ok
            else f"cannot read it: {exc.strerror}"
        )
        return Check(
            "proc_net_tls_stat",
            title,
            False,
            "absent",
            reason,
            "see tls module above" if not mod_ok else "check /proc is mounted",
            data={"present": False, "counters": None},
        )
    shown = ", ".join(f"{k} {counters[k]}" for k in _SHOWN_COUNTERS if k in counters)
    return Check(
        "proc_net_tls_stat",
        title,
        True,
        f"{len(counters)} counters (after this run's probes): {shown}",
        data={"present": True, "counters": dict(counters)},
    )


def nic_check() -> Check:
    title = "NIC TLS offload"
    try:
        found = nics.probe_nics()
    except Exception as exc:  # pyroute2 missing or netlink refused: say so, don't die
        return Check(
            "nic_tls_offload",
            title,
            None,
            f"cannot ask: {exc}",
            data={"method": nics.METHOD, "devices": None},
        )
    devices: list[JsonValue] = [
        {
            "name": n.name,
            "tls_hw_tx_offload": n.tx_available,
            "tls_hw_tx_offload_on": n.tx_on,
            "tls_hw_rx_offload": n.rx_available,
            "tls_hw_rx_offload_on": n.rx_on,
            "error": n.error or None,
        }
        for n in found
    ]
    data: dict[str, JsonValue] = {"method": nics.METHOD, "devices": devices}
    capable = [n for n in found if n.advertises]
    if capable:
        parts = []
        for n in capable:
            feats = [
                f"{f} {'on' if on else 'off'}"
                for f, avail, on in (
                    (nics.TX_FEATURE, n.tx_available, n.tx_on),
                    (nics.RX_FEATURE, n.rx_available, n.rx_on),
                )
                if avail
            ]
            parts.append(f"{n.name}: {', '.join(feats)}")
        return Check("nic_tls_offload", title, True, "; ".join(parts), data=data)
    names = ", ".join(n.name for n in found) or "no devices"
    return Check(
        "nic_tls_offload",
        title,
        False,
        f"none ({names})",
        f"no device advertises {nics.TX_FEATURE} or {nics.RX_FEATURE} "
        "(kTLS then encrypts in software, which works everywhere)",
        "for NIC offload: a NIC whose driver offloads TLS (e.g. mlx5 ConnectX-6 Dx), "
        f"then ethtool -K DEV {nics.TX_FEATURE} on {nics.RX_FEATURE} on",
        data=data,
    )


def openssl_check(o: libs.OpenSSLResult) -> Check:
    title = "OpenSSL kTLS"
    data: dict[str, JsonValue] = {
        "path": o.path,
        "version": o.version or None,
        "library": o.library or None,
        "ktls_in_disabled_list": o.ktls_disabled,
        "ktls_options": list(o.ktls_options),
        "built_with_ktls": o.built_with_ktls,
    }
    if o.path is None:
        return Check("openssl", title, None, "no openssl command on PATH", data=data)
    evidence = (
        f"KTLS not in `openssl list -disabled`; s_server offers "
        f"{', '.join(o.ktls_options) or 'no kTLS option'}"
    )
    if o.built_with_ktls:
        return Check(
            "openssl",
            title,
            True,
            f"{o.version}: built with kTLS ({evidence}); applications opt in with "
            "SSL_OP_ENABLE_KTLS or openssl.cnf `Options = KTLS`",
            data=data,
        )
    if o.major is not None and o.major < 3:
        reason, fix = "OpenSSL before 3.0 has no kTLS", "OpenSSL 3.0 or later"
    elif o.ktls_disabled:
        reason, fix = (
            "built with no-ktls (KTLS in `openssl list -disabled`)",
            "an OpenSSL 3 build without no-ktls (Debian's and Fedora's have it)",
        )
    else:
        reason, fix = (
            f"cannot tell from {o.version!r}: {evidence}",
            "an OpenSSL 3 build with kTLS",
        )
    return Check("openssl", title, False, o.version or "unknown", reason, fix, data=data)


def python_ssl_check(p: libs.PythonSSLResult, o: libs.OpenSSLResult) -> Check:
    title = "Python ssl kTLS"
    data: dict[str, JsonValue] = {
        "python": p.python,
        "openssl_version": p.openssl_version,
        "op_enable_ktls": p.has_op_enable_ktls,
        "library": p.library or None,
        "same_library_as_openssl": p.same_library_as_openssl,
    }
    lib = (
        "the same libssl as the openssl command"
        if p.same_library_as_openssl
        else (p.library or "an unknown libssl")
    )
    detail = f"Python {p.python}, {p.openssl_version} ({lib})"
    if not p.has_op_enable_ktls:
        return Check(
            "python_ssl",
            title,
            False,
            detail,
            f"Python {p.python}'s ssl has no OP_ENABLE_KTLS (added in Python 3.12)",
            "Python 3.12 or later, then ctx.options |= ssl.OP_ENABLE_KTLS",
            data=data,
        )
    if not p.same_library_as_openssl:
        return Check(
            "python_ssl",
            title,
            None,
            f"{detail}: cannot tell whether that libssl was built with kTLS",
            data=data,
        )
    if not o.built_with_ktls:
        return Check(
            "python_ssl",
            title,
            False,
            detail,
            "its libssl was built without kTLS (see OpenSSL kTLS)",
            "an OpenSSL 3 build with kTLS",
            data=data,
        )
    return Check(
        "python_ssl",
        title,
        True,
        f"{detail}: ssl.OP_ENABLE_KTLS exists and the library has kTLS",
        data=data,
    )


def diagnose(
    *,
    nic_probe: bool = True,
    library_probe: bool = True,
    root: Path = Path("/"),
    proc_tls_stat: Path = PROC_TLS_STAT,
) -> Report:
    """Ask every question; never raises for what the host lacks (that is the
    answer), only for a bug."""
    release = host.kernel_release()
    before = host.tls_module(release, root)
    cap = host.has_cap_net_admin()
    checks: list[Check] = [kernel_check(release, before)]
    try:
        ulp = probes.probe_ulp()
    except OSError as exc:  # no loopback TCP at all
        ulp = probes.UlpResult(exc)
    after = host.tls_module(release, root)
    ulp_ok = ulp.error is None
    checks.append(module_check(before, after, ulp_ok, cap))
    checks.append(ulp_check(ulp, before, cap))
    why_not = "" if ulp_ok else 'the tls ULP does not attach (see TCP_ULP "tls")'
    ciphers = (
        [probes.probe_cipher(v, c) for v in TLS_VERSIONS for c in CipherType] if ulp_ok else None
    )
    checks += cipher_checks(ciphers, why_not)
    checks.append(rekey_check(probes.probe_rekey() if ulp_ok else None, release, why_not))
    checks += option_checks(probes.probe_options() if ulp_ok else None, why_not)
    module_there = after.state in (host.ModuleState.LOADED, host.ModuleState.BUILTIN) or ulp_ok
    checks.append(tls_stat_check(proc_tls_stat, module_there))
    if nic_probe:
        checks.append(nic_check())
    if library_probe:
        o = libs.probe_openssl()
        checks.append(openssl_check(o))
        checks.append(python_ssl_check(libs.probe_python_ssl(o), o))
    return Report(release, tuple(checks))
