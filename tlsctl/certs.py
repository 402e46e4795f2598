"""Certificates for ``serve`` when the user brings none (and for tests).

An ephemeral self-signed ECDSA P-256 certificate makes ``tlsctl serve`` work
with no preparation; its SHA-256 fingerprint is printed so a client can pin
or at least compare it (``openssl s_client`` shows the same fingerprint with
``-showcerts | openssl x509 -fingerprint -sha256``).  ``make_cert`` can also
issue a leaf from a CA, which the tests use to exercise real verification.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CertKey:
    """A certificate with its private key (PEM available for files)."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint, colon-separated upper-case hex as OpenSSL prints it."""
        return sha256_fingerprint(self.cert)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """``AB:CD:...``: the SHA-256 of the DER certificate, colon-separated
    upper-case hex, as ``openssl x509 -fingerprint -sha256`` prints it (what
    ``serve`` shows at start-up, ``send -v`` shows, ``--pin-sha256`` takes)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def make_cert(
    names: list[str],
    *,
    issuer: CertKey | None = None,
    is_ca: bool = False,
    key_type: str = "ec",
    days: int = 30,
    backdate: datetime.timedelta = datetime.timedelta(0),
) -> CertKey:
    """A certificate for ``names`` (DNS names or IPs), self-signed or by ``issuer``.

    ``backdate`` moves the validity period into the past (an expired
    certificate: ``days=1, backdate=timedelta(days=2)``).
    """
    key: PrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "tlsctl")])
    now = datetime.datetime.now(datetime.UTC) - backdate
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if names and not is_ca:
        builder = builder.add_extension(_san(names), critical=False)
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    signer = issuer.key if issuer else key
    cert = builder.sign(signer, hashes.SHA256())
    return CertKey(cert, key)


def ephemeral_server_cert() -> CertKey:
    """Self-signed, for localhost, the loopback addresses and this host's name."""
    names = ["localhost", "127.0.0.1", "::1"]
    host = socket.gethostname()
    if host and host not in names:
        names.append(host)
    return make_cert(names, days=7)
