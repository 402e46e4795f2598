"""Building pyOpenSSL contexts from the command-line options.

One function per side so ``send`` and ``serve`` agree on defaults: modern
versions only (TLS 1.2 and 1.3), verification on for clients, the keylog
callback always installed (TLS 1.3 secrets reach us only through it).

With a record layer that must take the connection (``--offload sw``,
``kernel`` or a NIC driver) only the suites that layer can carry are offered
and accepted: a handshake that completed on, say, a CBC suite would then be
dropped without an alert, whereas a server that shares no suite with its
client sends handshake_failure, as ``openssl s_server`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from OpenSSL import SSL

from offload.keys import UnsupportedSuiteError, suite_from_openssl_name
from offload.uapi import TLS_1_2_VERSION
from tlsctl.certs import PrivateKey
from tlsctl.handshake import install_keylog

_CARRIED = "AES-128/256-GCM, AES-128-CCM and ChaCha20-Poly1305"


class ConfigError(Exception):
    """A bad option value or unusable file; one line for the user."""


@dataclass(frozen=True)
class TlsOptions:
    """Options shared by both commands (OpenSSL's spellings in comments)."""

    tls1_2: bool = False  # -tls1_2: only TLS 1.2
    tls1_3: bool = False  # -tls1_3: only TLS 1.3
    cipher: str | None = None  # -cipher: TLS 1.2 cipher list
    ciphersuites: str | None = None  # -ciphersuites: TLS 1.3 suites
    cafile: str | None = None  # -CAfile
    # --offload whose record layer must carry the suite (sw, kernel, a NIC
    # driver); None when pyOpenSSL may keep the connection (auto, none).
    layer: str | None = None


def _base(opts: TlsOptions, method: int) -> SSL.Context:
    ctx = SSL.Context(method)
    if opts.tls1_2 and opts.tls1_3:
        raise ConfigError("-tls1_2 and -tls1_3 exclude each other")
    lo, hi = SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION
    if opts.tls1_2:
        hi = SSL.TLS1_2_VERSION
    if opts.tls1_3:
        lo = SSL.TLS1_3_VERSION
    ctx.set_min_proto_version(lo)
    ctx.set_max_proto_version(hi)
    _set_ciphers(ctx, opts.cipher, opts.ciphersuites)
    if opts.layer is not None:
        tls12, tls13 = _carried(method, opts, opts.layer)
        _set_ciphers(ctx, tls12, tls13)
    # Renegotiation would change keys behind the record layer's back.
    ctx.set_options(SSL.OP_NO_RENEGOTIATION)
    install_keylog(ctx)
    return ctx


def _set_ciphers(ctx: SSL.Context, cipher: str | None, ciphersuites: str | None) -> None:
    try:
        if cipher:
            ctx.set_cipher_list(cipher.encode())
        if ciphersuites:
            ctx.set_tls13_ciphersuites(ciphersuites.encode())
    except SSL.Error:
        raise ConfigError("no usable cipher in -cipher/-ciphersuites") from None


def _carried(method: int, opts: TlsOptions, layer: str) -> tuple[str, str]:
    """The enabled TLS 1.2 and 1.3 suites the kTLS layer has a cipher for.

    The enabled list (the user's ``-cipher``/``-ciphersuites`` or OpenSSL's
    defaults) is read back from OpenSSL and filtered, so its order, and with
    it the server's preference, is kept.  A scratch context is needed:
    pyOpenSSL refuses to change a context a Connection was made from.  An
    explicit option that leaves nothing is the user's mistake, named here.
    """
    scratch = SSL.Context(method)
    _set_ciphers(scratch, opts.cipher, opts.ciphersuites)
    tls12: list[str] = []
    tls13: list[str] = []
    for name in SSL.Connection(scratch, None).get_cipher_list():
        try:
            suite = suite_from_openssl_name(name)
        except UnsupportedSuiteError:
            continue
        (tls12 if suite.version == TLS_1_2_VERSION else tls13).append(name)
    for names, option, value in ((tls12, "-cipher", opts.cipher),
                                 (tls13, "-ciphersuites", opts.ciphersuites)):
        if not names:
            given = f"{option} {value}" if value else "the default cipher list"
            raise ConfigError(f"{given}: no cipher suite that --offload {layer} can carry "
                              f"(kernel TLS has only {_CARRIED} suites)")
    return ":".join(tls12), ":".join(tls13)


def _load_identity(ctx: SSL.Context, cert: x509.Certificate | str,
                   key: PrivateKey | str) -> None:
    try:
        if isinstance(cert, str):
            ctx.use_certificate_chain_file(cert)
        else:
            ctx.use_certificate(cert)
    except (SSL.Error, OSError):
        raise ConfigError(f"cannot load certificate {cert!r}") from None
    try:
        if isinstance(key, str):
            ctx.use_privatekey_file(key)
        else:
            ctx.use_privatekey(key)
    except (SSL.Error, OSError):
        raise ConfigError(f"cannot load private key {key!r}") from None
    try:
        ctx.check_privatekey()
    except SSL.Error:
        raise ConfigError("the private key does not match the certificate") from None


def client_context(opts: TlsOptions, *, verify: bool, cert: str | None = None,
                   key: str | None = None) -> SSL.Context:
    """A client context; ``verify`` checks the chain against the trust store.

    The host name is checked per connection (``run_handshake(verify_host=)``).
    ``cert``/``key``: a client certificate for servers that ask for one.
    """
    ctx = _base(opts, SSL.TLS_CLIENT_METHOD)
    if cert is not None:
        _load_identity(ctx, cert, key or cert)
    if verify:
        ctx.set_verify(SSL.VERIFY_PEER)
        try:
            if opts.cafile:
                ctx.load_verify_locations(opts.cafile)
            else:
                ctx.set_default_verify_paths()
        except SSL.Error:
            raise ConfigError(f"cannot load CA file {opts.cafile!r}") from None
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


def server_context(
    opts: TlsOptions,
    *,
    cert: x509.Certificate | str,
    key: PrivateKey | str,
    verify_client: int = 0,
    require_client: bool = False,
) -> SSL.Context:
    """A server context with a certificate (PEM paths or loaded objects)."""
    ctx = _base(opts, SSL.TLS_SERVER_METHOD)
    _load_identity(ctx, cert, key)
    if verify_client:
        mode = SSL.VERIFY_PEER
        if require_client:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode)
        ctx.set_verify_depth(verify_client)
        try:
            if opts.cafile:
                ctx.load_verify_locations(opts.cafile)
                ctx.load_client_ca(opts.cafile.encode())
            else:
                ctx.set_default_verify_paths()
        except SSL.Error:
            raise ConfigError(f"cannot load CA file {opts.cafile!r}") from None
    return ctx
