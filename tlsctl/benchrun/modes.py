"""The modes ``tlsctl bench`` compares, and why one may not run here.

  tcp           plain TCP from the same program (readinto + sendall)
  tcp-sendfile  plain TCP with the kernel's zero-copy sendfile (reference)
  userspace     pyOpenSSL's own record layer (SSL_write): two passes over the data
  sw            this layer in software (``--offload sw``)
  sim-nic       this layer with TX on the simulated offload NIC (faults apply)
  kernel        the host kernel's kTLS (skipped where the kernel has none)
  openssl       ``openssl s_server -WWW`` serving the file, curl fetching it

A mode that cannot run is not an error: it is listed with the reason
(:func:`skip_reason` before the run; :class:`~tlsctl.benchrun.errors.ModeUnavailable`
during it, e.g. the NIC declined the negotiated cipher).
"""

from __future__ import annotations

import shutil

from offload.kernel import kernel_has_ktls, kernel_has_max_payload
from offload.uapi import TLS_MIN_RECORD_SIZE_LIM

ALL_MODES = ("tcp", "tcp-sendfile", "userspace", "sw", "sim-nic", "kernel", "openssl")
DEFAULT_MODES = ("tcp", "userspace", "sw", "sim-nic", "kernel", "openssl")
LOOPBACK_ONLY = ("tcp", "tcp-sendfile", "openssl")
"""Modes that need the bench's own receiver (not a remote ``serve --sink``)."""
TLS_MAX_RECORD = 16384
"""Plaintext bytes per record by default (2^14), the only size the kernel mode takes."""
ALERT_SIZE = 2
"""An alert's plaintext (level, description).  RFC 8446 5.1: alerts MUST NOT
be fragmented across records, so this layer's records (close_notify
included) need room for one: ``--record-size 1`` would split it, and the
peer answers unexpected_message / decode_error."""
OPENSSL_MIN_FRAG = 512
"""``openssl s_server -max_send_frag``'s lower bound (it refuses less and
does not start)."""

_MIN_RECORD = {"sw": ALERT_SIZE, "sim-nic": ALERT_SIZE, "openssl": OPENSSL_MIN_FRAG}
"""The smallest --record-size each mode can run with (the others take any)."""


def parse_modes(text: str) -> tuple[str, ...]:
    """``"sw, tcp,sw"`` -> ``("sw", "tcp")``: known names, first mention kept.

    ValueError (one line) for an unknown name or an empty list.
    """
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in ALL_MODES]
    if bad or not modes:
        raise ValueError(
            f"unknown mode {', '.join(bad) or '(none)'}; choose from {', '.join(ALL_MODES)}"
        )
    return tuple(dict.fromkeys(modes))


def _missing_tools() -> str | None:
    missing = [t for t in ("openssl", "curl") if shutil.which(t) is None]
    return f"{' and '.join(missing)} not found" if missing else None


RX_MODES = ("tcp", "sw", "sim-nic")
"""Modes ``--direction rx`` measures (:mod:`.rxbench`): the receiving host as
plain TCP, this layer in software, this layer with the sim-nic decrypting."""

NETNS_MODES = ("tcp", "tcp-sendfile", "userspace", "sw", "sim-nic", "kernel")
"""Modes that run over the real wire (``--wire netns``): not openssl, whose
s_server and curl the bench does not place in namespaces."""


def skip_reason(
    mode: str,
    *,
    remote: bool,
    record_size: int,
    wire: str = "model",
    reverse: bool = False,
    direction: str = "tx",
) -> str | None:
    """Why ``mode`` cannot run with these settings on this host, or None."""
    if direction == "rx":
        # The replayed stream holds data records only (no alert to fit):
        # every record size runs.
        if mode not in RX_MODES:
            return f"no receiver measured for {mode} (--direction rx: {', '.join(RX_MODES)})"
        return None
    if remote and mode in LOOPBACK_ONLY:
        return "needs the bench's own receiver (loopback only)"
    if wire == "netns" and mode not in NETNS_MODES:
        return "runs on loopback only (--wire model): s_server and curl are not put in namespaces"
    if reverse and mode == "openssl":
        return (
            "-R: openssl s_server -WWW cannot take an upload; the openssl mode "
            "already measures the server sending (run it without -R)"
        )
    if mode == "kernel":
        ok, why = kernel_has_ktls()
        if not ok:
            return f"no kernel kTLS here: {why}" if why else "no kernel kTLS here"
        if record_size != TLS_MAX_RECORD:
            ok, why = kernel_has_max_payload()
            if not ok:
                return f"--record-size: {why}"
            if record_size < TLS_MIN_RECORD_SIZE_LIM:
                return (
                    f"--record-size {record_size} is below the {TLS_MIN_RECORD_SIZE_LIM} "
                    "TLS_TX_MAX_PAYLOAD_LEN takes"
                )
    least = _MIN_RECORD.get(mode, 1)
    if record_size < least:
        why = (
            "s_server -max_send_frag takes 512..16384"
            if mode == "openssl"
            else "an alert's 2 bytes must fit in one record (RFC 8446 5.1)"
        )
        return f"--record-size {record_size} is below the {least} it needs: {why}"
    if mode == "openssl":
        return _missing_tools()
    return None
