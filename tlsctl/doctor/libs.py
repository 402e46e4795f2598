"""Whether the TLS libraries on this host can hand their keys to kTLS.

OpenSSL (3.0+) does kTLS when built without ``no-ktls`` and when the
application opts in (``SSL_OP_ENABLE_KTLS``, or ``Options = KTLS`` in
openssl.cnf).  How a build is told apart: ``openssl list -disabled`` names
``KTLS`` when it was built with ``no-ktls`` (OpenSSL < 3.0 has no kTLS at
all), and ``s_server -help`` offers ``-sendfile`` (3.0/3.1) or ``-ktls``
(3.2+) only in a kTLS build: two independent signs, both reported.
Python's :mod:`ssl` can ask for kTLS only through ``ssl.OP_ENABLE_KTLS``
(Python 3.12+), and then only if the libssl it is linked to is such a build.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OpenSSLResult:
    """The ``openssl`` command on PATH and the library it loads."""

    path: str | None
    version: str
    """``openssl version``'s first line (empty when there is no binary)."""
    library: str
    """The libssl it loads (from ``ldd``), empty when unknown."""
    ktls_disabled: bool | None
    """``KTLS`` in ``openssl list -disabled`` (None: could not ask)."""
    ktls_options: tuple[str, ...]
    """``-sendfile`` / ``-ktls`` as ``s_server -help`` lists them."""
    major: int | None

    @property
    def built_with_ktls(self) -> bool:
        return bool(
            self.path
            and self.major is not None
            and self.major >= 3
            and self.ktls_disabled is False
            and self.ktls_options
        )


@dataclass(frozen=True)
class PythonSSLResult:
    """The ``ssl`` module of the Python running tlsctl."""

    python: str
    openssl_version: str
    has_op_enable_ktls: bool
    library: str
    """The libssl mapped into this process."""
    same_library_as_openssl: bool


def _run(argv: list[str]) -> str:
    try:
        r = subprocess.run(
            argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout + r.stderr


def _libssl_of(binary: str) -> str:
    for line in _run(["ldd", binary]).splitlines():
        m = re.match(r"\s*libssl\.so\S*\s+=>\s+(\S+)", line)
        if m:
            return str(Path(m[1]).resolve())
    return ""


def probe_openssl() -> OpenSSLResult:
    path = shutil.which("openssl")
    if path is None:
        return OpenSSLResult(None, "", "", None, (), None)
    version = _run([path, "version"]).strip().splitlines()
    first = version[0] if version else ""
    m = re.match(r"OpenSSL (\d+)\.", first)
    disabled_out = _run([path, "list", "-disabled"])
    disabled: bool | None = None
    if "Disabled" in disabled_out:
        disabled = "KTLS" in {w.strip() for w in disabled_out.splitlines()}
    help_out = _run([path, "s_server", "-help"])
    options = tuple(
        o for o in ("-sendfile", "-ktls") if re.search(rf"^\s*{re.escape(o)}\b", help_out, re.M)
    )
    return OpenSSLResult(path, first, _libssl_of(path), disabled, options, int(m[1]) if m else None)


def _mapped_libssl() -> str:
    """The libssl the running interpreter's ``_ssl`` loaded (from /proc/self/maps)."""
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 6 and re.search(r"/libssl\.so", parts[-1]):
                return str(Path(parts[-1]).resolve())
    except OSError:
        pass
    return ""


def probe_python_ssl(openssl: OpenSSLResult) -> PythonSSLResult:
    lib = _mapped_libssl()
    v = sys.version_info
    return PythonSSLResult(
        python=f"{v.major}.{v.minor}.{v.micro}",
        openssl_version=ssl.OPENSSL_VERSION,
        has_op_enable_ktls=hasattr(ssl, "OP_ENABLE_KTLS"),
        library=lib,
        same_library_as_openssl=bool(lib) and lib == openssl.library,
    )
