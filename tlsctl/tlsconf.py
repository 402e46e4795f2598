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

import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL, crypto

from offload.keys import UnsupportedSuiteError, suite_from_openssl_name
from offload.uapi import TLS_1_2_VERSION
from tlsctl.certs import PrivateKey
from tlsctl.handshake import install_keylog
from tlsctl.tracing import Tracer
from tlsctl.verify import VerifyCallback

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
    capath: str | None = None  # -CApath: a hashed directory (openssl rehash)
    alpn: tuple[str, ...] = ()  # -alpn: protocols, in preference order
    max_send_frag: int | None = None  # -max_send_frag: TLS_TX_MAX_PAYLOAD_LEN after the handoff
    trace: Tracer | None = None  # -msg, -debug, -state (tlsctl.tracing)
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
    if opts.alpn:
        _set_alpn(ctx, method, opts.alpn)
    install_keylog(ctx)
    if opts.max_send_frag is not None:
        setattr(ctx, _MAX_SEND_FRAG, opts.max_send_frag)
    if opts.trace is not None:
        opts.trace.install(ctx)
    return ctx


_MAX_SEND_FRAG = "_tlsctl_max_send_frag"


def max_send_frag_of(ctx: SSL.Context) -> int | None:
    """-max_send_frag as given to the context the connection was made with.

    It travels on the context, as the tracer does, because the layer is
    opened per connection (``session.channel.establish``) from what the
    handshake left, and pyOpenSSL has no call for OpenSSL's own limit."""
    found = getattr(ctx, _MAX_SEND_FRAG, None)
    return found if isinstance(found, int) else None


def _set_ciphers(ctx: SSL.Context, cipher: str | None, ciphersuites: str | None) -> None:
    try:
        if cipher:
            ctx.set_cipher_list(cipher.encode())
        if ciphersuites:
            ctx.set_tls13_ciphersuites(ciphersuites.encode())
    except SSL.Error:
        raise ConfigError("no usable cipher in -cipher/-ciphersuites") from None


def _set_alpn(ctx: SSL.Context, method: int, alpn: tuple[str, ...]) -> None:
    """-alpn: a client offers the list; a server picks the first of its own
    list the client offered (``SSL_select_next_proto``'s server preference, as
    ``s_server -alpn``).  With nothing in common the server ends the
    handshake with no_application_protocol (RFC 7301 3.2: SHALL; s_server
    does the same): the callback's exception makes pyOpenSSL answer
    ``SSL_TLSEXT_ERR_ALERT_FATAL``, for which OpenSSL sends that alert.  A
    client that offered no ALPN at all is served without it."""
    protos = [p.encode() for p in alpn]
    if method == SSL.TLS_CLIENT_METHOD:
        ctx.set_alpn_protos(protos)
        return

    def select(_conn: SSL.Connection, offered: list[bytes]) -> bytes:
        for p in protos:
            if p in offered:
                return p
        theirs = ",".join(o.decode(errors="replace") for o in offered)
        raise SSL.Error([("", "", f"no -alpn protocol in common with the client's {theirs}")])

    ctx.set_alpn_select_callback(select)


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
    for names, option, value in (
        (tls12, "-cipher", opts.cipher),
        (tls13, "-ciphersuites", opts.ciphersuites),
    ):
        if not names:
            given = f"{option} {value}" if value else "the default cipher list"
            raise ConfigError(
                f"{given}: no cipher suite that --offload {layer} can carry "
                f"(kernel TLS has only {_CARRIED} suites)"
            )
    return ":".join(tls12), ":".join(tls13)


def _read(path: str, option: str) -> bytes:
    """A PEM file's bytes; a missing or unreadable file is named with its option."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{option} {path}: is a directory, not a PEM file") from None
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot read: {exc.strerror or exc}") from None


def load_certs(path: str, option: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file (a chain, a CA bundle); a file with none
    is named with its option, and a private key given as one is said to be one."""
    data = _read(path, option)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        hint = (
            "it holds a private key: -cert and -key swapped?"
            if b"PRIVATE KEY-----" in data
            else "no -----BEGIN CERTIFICATE----- block"
        )
        raise ConfigError(f"{option} {path}: no PEM certificate in it ({hint})")
    return certs


def _load_key(path: str, option: str) -> PrivateKey:
    data = _read(path, option)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise ConfigError(
            f"{option} {path}: the private key is encrypted and tlsctl takes "
            f"no pass phrase (decrypt it: openssl pkey -in {path} -out "
            "plain.key)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        if option == "-cert":
            hint = "and no -key given: give the key file with -key"
        elif b"CERTIFICATE-----" in data and b"PRIVATE KEY-----" not in data:
            hint = "it holds a certificate: -cert and -key swapped?"
        else:
            hint = "no -----BEGIN PRIVATE KEY----- block"
        raise ConfigError(f"{option} {path}: no private key in it ({hint})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(
            f"{option} {path}: a {type(key).__name__} key; tlsctl takes RSA or EC keys"
        )
    return key


def _key_kind(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.removeprefix("_")


def _load_identity(
    ctx: SSL.Context, cert: x509.Certificate | str, key: PrivateKey | str | None
) -> None:
    """The certificate (chain) and its key, each failure with its own reason:
    a missing file, no certificate or key in it, an encrypted key, a key
    that belongs to another certificate.  ``key`` None: in the -cert file."""
    chain: list[x509.Certificate]
    if isinstance(cert, str):
        chain = load_certs(cert, "-cert")
    else:
        chain = [cert]
    if key is None:
        assert isinstance(cert, str)
        key_obj, key_where = _load_key(cert, "-cert"), f"-cert {cert}"
    elif isinstance(key, str):
        key_obj, key_where = _load_key(key, "-key"), f"-key {key}"
    else:
        key_obj, key_where = key, "the key"
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    cert_pub = chain[0].public_key()
    if key_obj.public_key().public_bytes(*spki) != cert_pub.public_bytes(*spki):
        cert_where = f"-cert {cert}" if isinstance(cert, str) else "the certificate"
        mine, theirs = _key_kind(key_obj.public_key()), _key_kind(cert_pub)
        what = (
            f"a different {mine} key"
            if mine == theirs
            else f"the key is {mine}, the certificate's is {theirs}"
        )
        raise ConfigError(f"{key_where} does not match {cert_where} ({what})")
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        ctx.use_privatekey(key_obj)
        ctx.check_privatekey()
    except SSL.Error as exc:  # e.g. a key OpenSSL refuses for TLS (too small)
        raise ConfigError(
            f"{key_where}: OpenSSL refused the certificate or key: {_openssl_reason(exc)}"
        ) from None


def _openssl_reason(exc: SSL.Error) -> str:
    items = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    return "; ".join(str(i[-1]) for i in items if isinstance(i, tuple) and i) or "unknown"


def _trust(ctx: SSL.Context, cafile: str | None, capath: str | None = None) -> str:
    """Load -CAfile and -CApath (or the system store); the words for where
    trust comes from.  -CApath is a directory of ``HASH.N`` links (``openssl
    rehash``): OpenSSL looks a CA up there by its subject hash when it needs
    one, so a directory that was never rehashed verifies nothing; it is
    checked here to exist and be readable, its contents only at use."""
    if not cafile and not capath:
        ctx.set_default_verify_paths()
        return "the system trust store"
    where: list[str] = []
    if cafile:
        load_certs(cafile, "-CAfile")
        try:
            ctx.load_verify_locations(cafile)
        except SSL.Error as exc:
            raise ConfigError(f"-CAfile {cafile}: {_openssl_reason(exc)}") from None
        where.append(f"-CAfile {cafile}")
    if capath:
        if not os.path.isdir(capath):
            what = "not a directory" if os.path.exists(capath) else "no such directory"
            raise ConfigError(f"-CApath {capath}: {what}")
        if not os.access(capath, os.R_OK | os.X_OK):
            raise ConfigError(f"-CApath {capath}: cannot read the directory")
        try:
            ctx.load_verify_locations(None, capath)
        except SSL.Error as exc:
            raise ConfigError(f"-CApath {capath}: {_openssl_reason(exc)}") from None
        where.append(f"-CApath {capath}")
    return " and ".join(where)


def client_context(
    opts: TlsOptions,
    *,
    verify: bool,
    cert: str | None = None,
    key: str | None = None,
    pin: bytes | None = None,
) -> SSL.Context:
    """A client context; ``verify`` checks the chain against the trust store.

    The host name is checked per connection (``run_handshake(verify_host=)``).
    ``cert``/``key``: a client certificate for servers that ask for one.
    ``pin``: accept exactly the server certificate with this SHA-256 (the
    pin replaces the CA and name checks; :mod:`tlsctl.verify`).  A failed
    check is recorded for :func:`tlsctl.verify.failure_line`.
    """
    ctx = _base(opts, SSL.TLS_CLIENT_METHOD)
    if cert is not None:
        _load_identity(ctx, cert, key)
    if pin is not None:
        ctx.set_verify(SSL.VERIFY_PEER, VerifyCallback(pin=pin))
    elif verify:
        ctx.set_verify(SSL.VERIFY_PEER, VerifyCallback(_trust(ctx, opts.cafile, opts.capath)))
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


def server_context(
    opts: TlsOptions,
    *,
    cert: x509.Certificate | str,
    key: PrivateKey | str | None,
    verify_client: int = 0,
    require_client: bool = False,
) -> SSL.Context:
    """A server context with a certificate (PEM paths or loaded objects;
    ``key`` None: the key is in the ``cert`` file)."""
    ctx = _base(opts, SSL.TLS_SERVER_METHOD)
    _load_identity(ctx, cert, key)
    if verify_client:
        mode = SSL.VERIFY_PEER
        if require_client:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify_depth(verify_client)
        trust = _trust(ctx, opts.cafile, opts.capath)
        if opts.cafile:
            ctx.load_client_ca(opts.cafile.encode())
        ctx.set_verify(mode, VerifyCallback(trust, of_server=False))
    return ctx
