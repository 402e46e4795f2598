"""Certificate verification that says which check failed, and on which certificate.

OpenSSL's handshake error for every failed check is the same "certificate
verify failed".  What failed is only known inside verification: the verify
callback is called with the error number, the depth and the certificate
(``openssl s_client`` prints them as ``depth=0 CN = localhost`` /
``verify error:num=62:hostname mismatch``).  :class:`VerifyCallback`
records the first failure on the connection (:class:`VerifyState`, reached
through the connection's app data) and :func:`failure_line` turns it into
one line in curl's and OpenSSL's words, e.g.::

    certificate verify failed: no alternative certificate subject name matches
    target host name '127.0.0.1' (depth 0 CN=localhost has DNS:localhost: an IP
    address needs an IP SAN; verify error:num=64:IP address mismatch)

The callback never changes OpenSSL's verdict, except with a pin
(``--pin-sha256``): the leaf's SHA-256 must equal the pin, and it replaces
the chain and name checks (the pin names exactly one certificate; a
self-signed ``tlsctl serve`` prints its fingerprint for this).  A mismatch
fails the handshake inside OpenSSL, so the server gets the bad_certificate
alert as with any other verification failure.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from enum import IntEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL, crypto

from tlsctl.certs import sha256_fingerprint

__all__ = [
    "PinMismatch",
    "VerifyCallback",
    "VerifyFailure",
    "VerifyState",
    "X509Error",
    "failure_line",
    "parse_pin",
]


class X509Error(IntEnum):
    """OpenSSL's ``X509_V_ERR_*`` numbers this module explains in its own words
    (every other number gets OpenSSL's text, ``X509_verify_cert_error_string``)."""

    CERT_NOT_YET_VALID = 9
    CERT_HAS_EXPIRED = 10
    DEPTH_ZERO_SELF_SIGNED_CERT = 18
    SELF_SIGNED_CERT_IN_CHAIN = 19
    UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
    UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21
    HOSTNAME_MISMATCH = 62
    IP_ADDRESS_MISMATCH = 64


@dataclass(frozen=True)
class VerifyFailure:
    """The first check that failed: OpenSSL's error number, the depth in the
    chain (0: the peer's own certificate) and that certificate."""

    errnum: int
    depth: int
    cert: x509.Certificate


@dataclass(frozen=True)
class PinMismatch:
    """``--pin-sha256`` did not match the peer's certificate."""

    seen: str
    pinned: str


@dataclass
class VerifyState:
    """One connection's verification: what was checked against what, and the
    first failure.  ``target``: the host name or IP checked (None: none);
    ``trust``: where trusted CAs come from, in the words of the option."""

    target: str | None = None
    trust: str = "the system trust store"
    failure: VerifyFailure | PinMismatch | None = None
    of_server: bool = True  # we check a server's certificate (send), not a client's (serve)


def _state(conn: SSL.Connection) -> VerifyState | None:
    """The connection's :class:`VerifyState`: its app data is one, or carries
    one as ``verify`` (the handshake's per-connection store)."""
    data = conn.get_app_data()
    if isinstance(data, VerifyState):
        return data
    found = getattr(data, "verify", None)
    return found if isinstance(found, VerifyState) else None


class VerifyCallback:
    """The context's verify callback: records the first failure on the
    connection, and with ``pin`` decides by the leaf's fingerprint alone."""

    def __init__(
        self, trust: str | None = None, pin: bytes | None = None, *, of_server: bool = True
    ) -> None:
        self.trust = trust or "the system trust store"
        self.pin = pin
        self.of_server = of_server

    def __call__(
        self, conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int
    ) -> bool:
        state = _state(conn)
        if state is not None:
            state.trust, state.of_server = self.trust, self.of_server
        if self.pin is not None:
            if depth != 0:
                return True  # the pin replaces the chain check
            leaf = cert.to_cryptography()
            if leaf.fingerprint(_SHA256) == self.pin:
                return True
            if state is not None and state.failure is None:
                state.failure = PinMismatch(sha256_fingerprint(leaf), format_pin(self.pin))
            return False
        if not ok and state is not None and state.failure is None:
            state.failure = VerifyFailure(errnum, depth, cert.to_cryptography())
        return bool(ok)


_SHA256 = hashes.SHA256()
_HEX = frozenset(string.hexdigits)


def parse_pin(text: str) -> bytes:
    """A SHA-256 fingerprint as people paste it: ``AB:CD:...`` (as ``serve``
    and ``openssl x509 -fingerprint -sha256`` print it, with or without the
    ``sha256 Fingerprint=`` prefix), or 64 hex digits, any case.
    ValueError with a one-line reason."""
    digits = text.strip().rpartition("=")[2].replace(":", "").replace(" ", "")
    if not digits or not set(digits) <= _HEX:
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons optional)")
    if len(digits) != 64:
        raise ValueError(
            f"{text!r}: a SHA-256 fingerprint has 64 hex digits, this has {len(digits)}"
        )
    return bytes.fromhex(digits)


def format_pin(pin: bytes) -> str:
    """Colon-separated upper-case hex, as ``serve`` prints fingerprints."""
    return ":".join(f"{b:02X}" for b in pin)


def openssl_reason(errnum: int) -> str:
    """OpenSSL's own text for ``errnum`` (``openssl s_client``'s ``verify error``)."""
    from OpenSSL._util import ffi, lib  # no public wrapper in pyOpenSSL

    text = lib.X509_verify_cert_error_string(errnum)
    return ffi.string(text).decode(errors="replace") if text else f"error {errnum}"


def _names(cert: x509.Certificate) -> str:
    """The names a certificate is for, as OpenSSL prints SANs (``DNS:a, IP:b``)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subject alternative name"
    parts = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
    parts += [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]
    return ", ".join(parts) or "no DNS or IP name"


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def failure_line(conn: SSL.Connection) -> str | None:
    """One line for the verification failure recorded on ``conn``, or None."""
    state = _state(conn)
    if state is None or state.failure is None:
        return None
    return describe(state.failure, state)


def describe(failure: VerifyFailure | PinMismatch, state: VerifyState) -> str:
    """Which check failed, on which certificate, and what to do about it."""
    if isinstance(failure, PinMismatch):
        return (
            f"--pin-sha256: the server's certificate has SHA-256 {failure.seen}, "
            f"not the pinned {failure.pinned}"
        )
    n, cert, depth = failure.errnum, failure.cert, failure.depth
    where = f"depth {depth} {_subject(cert)}"
    tag = f"verify error:num={n}:{openssl_reason(n)}"
    target = state.target or "?"
    if n == X509Error.HOSTNAME_MISMATCH:
        why = (
            f"no alternative certificate subject name matches target host name "
            f"'{target}' ({where} is for {_names(cert)}; {tag})"
        )
    elif n == X509Error.IP_ADDRESS_MISMATCH:
        why = (
            f"no alternative certificate subject name matches target host name "
            f"'{target}' ({where} is for {_names(cert)}: an IP address needs an IP "
            f"SAN; connect by a name it has or give -servername NAME; {tag})"
        )
    elif n == X509Error.DEPTH_ZERO_SELF_SIGNED_CERT:
        hint = (
            ": trust it with -CAfile, pin it with --pin-sha256, or skip the check with -k"
            if state.of_server
            else ""
        )
        why = (
            f"self-signed certificate {_subject(cert)} (SHA-256 "
            f"{sha256_fingerprint(cert)}) is not trusted by {state.trust}{hint} ({tag})"
        )
    elif n == X509Error.SELF_SIGNED_CERT_IN_CHAIN:
        why = (
            f"the chain ends in CA {_subject(cert)} (depth {depth}), which is not in "
            f"{state.trust} ({tag})"
        )
    elif n in (
        X509Error.UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
        X509Error.UNABLE_TO_VERIFY_LEAF_SIGNATURE,
    ):
        why = (
            f"unknown CA: the issuer {cert.issuer.rfc4514_string()} of {where} is not "
            f"in {state.trust} ({tag})"
        )
    elif n == X509Error.CERT_HAS_EXPIRED:
        when = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
        why = f"certificate expired: {where} was valid until {when} ({tag})"
    elif n == X509Error.CERT_NOT_YET_VALID:
        when = cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
        why = f"certificate not yet valid: {where} is valid from {when} ({tag})"
    else:
        why = f"{openssl_reason(n)} at {where} ({tag})"
    return f"certificate verify failed: {why}"
