"""Facts about the running kernel that need no socket: its version, how it
was built (``CONFIG_TLS``), whether the ``tls`` module is loaded, built in or
loadable, and whether this process may make the kernel load it.

Reading these never loads anything.  The module state is read from
``/proc/modules`` and ``/sys/module/tls`` (loaded), ``modules.builtin`` (built
in) and ``modules.dep`` (loadable) under ``/lib/modules/$(uname -r)``: what
``modprobe -n`` would consult, without running it.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

TLS_MODULE_PATH = "kernel/net/tls/tls.ko"
CAP_NET_ADMIN = 12


class ModuleState(StrEnum):
    """Where the kernel's ``tls`` code is (JSON: the value)."""

    LOADED = "loaded"
    BUILTIN = "builtin"
    LOADABLE = "loadable"
    MISSING = "missing"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ModuleInfo:
    """The ``tls`` module as the file system shows it."""

    state: ModuleState
    modules_dir: str
    """``/lib/modules/<release>``."""
    file: str | None
    """The module file (relative to ``modules_dir``) when one exists."""
    config: str | None
    """``CONFIG_TLS``'s value (``y``/``m``/``n``) when a kernel config is found."""
    config_device: str | None
    """``CONFIG_TLS_DEVICE`` (NIC offload support) likewise."""
    config_source: str | None


def kernel_release() -> str:
    return os.uname().release


def kernel_version(release: str) -> tuple[int, int, int] | None:
    """``(6, 1, 0)`` from ``6.1.0-57-amd64``; None if it does not start with one."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if m is None:
        return None
    return int(m[1]), int(m[2]), int(m[3] or 0)


def _kernel_config(release: str, root: Path) -> tuple[dict[str, str], str | None]:
    """The kernel's ``CONFIG_*`` values from /boot/config-R or /proc/config.gz."""
    candidates = [root / "boot" / f"config-{release}", root / "proc" / "config.gz"]
    for path in candidates:
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        if path.suffix == ".gz":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError):
                continue
        values: dict[str, str] = {}
        for line in raw.decode(errors="replace").splitlines():
            if line.startswith("CONFIG_TLS"):
                name, _, value = line.partition("=")
                values[name] = value
            elif line.startswith("# CONFIG_TLS") and line.endswith(" is not set"):
                values[line[2:].split()[0]] = "n"
        return values, str(path)
    return {}, None


def _module_loaded(root: Path) -> bool:
    try:
        for line in (root / "proc" / "modules").read_text().splitlines():
            if line.split(" ", 1)[0] == "tls":
                return True
    except OSError:
        pass
    return (root / "sys" / "module" / "tls").is_dir()


def _listed(path: Path) -> str | None:
    """The ``kernel/net/tls/tls.ko[.xz|.zst|.gz]`` entry of modules.dep /
    modules.builtin, if any."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name = line.split(":", 1)[0].strip()
        if name == TLS_MODULE_PATH or name.startswith(TLS_MODULE_PATH + "."):
            return name
    return None


def tls_module(release: str, root: Path = Path("/")) -> ModuleInfo:
    """Where the ``tls`` module is, read from the file system only."""
    moddir = root / "lib" / "modules" / release
    config, source = _kernel_config(release, root)

    def info(state: ModuleState, file: str | None = None) -> ModuleInfo:
        return ModuleInfo(
            state,
            str(Path("/lib/modules") / release),
            file,
            config.get("CONFIG_TLS"),
            config.get("CONFIG_TLS_DEVICE"),
            source,
        )

    builtin = _listed(moddir / "modules.builtin")
    if builtin is not None or config.get("CONFIG_TLS") == "y":
        return info(ModuleState.BUILTIN, builtin)
    dep = _listed(moddir / "modules.dep")
    if _module_loaded(root):
        return info(ModuleState.LOADED, dep)
    if dep is not None:
        return info(ModuleState.LOADABLE, dep)
    if moddir.is_dir() or config.get("CONFIG_TLS") == "n":
        return info(ModuleState.MISSING)
    return info(ModuleState.UNKNOWN)


def has_cap_net_admin(status: Path = Path("/proc/self/status")) -> bool:
    """CAP_NET_ADMIN in this process's effective set: the kernel autoloads a
    missing TCP ULP module (``request_module("tcp-ulp-tls")``) only for such
    a caller."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0
