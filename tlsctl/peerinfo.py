"""``-showcerts`` and ``-brief``: the peer as ``openssl s_client`` shows it.

Text only, from a finished handshake; the command decides where it goes
(s_client writes the chain to stdout and the brief summary to stderr, and
so does ``tlsctl send``).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tlsctl.handshake import HandshakeResult

__all__ = ["brief_lines", "chain_pems", "oneline", "showcerts_text"]


def oneline(name: x509.Name) -> str:
    """A name as OpenSSL's ``XN_FLAG_ONELINE`` prints it: ``C = DE, CN = host``
    (encoding order, not RFC 4514's reversed one)."""
    return ", ".join(
        f"{attr.rfc4514_attribute_name} = {attr.value!s}" for rdn in name.rdns for attr in rdn
    )


def peer_chain(res: HandshakeResult) -> list[x509.Certificate]:
    """The certificates the peer sent, its own first (a client's view of a
    server includes the leaf; OpenSSL leaves a server's view of a client
    without it, so the leaf is put back)."""
    chain = res.conn.get_peer_cert_chain(as_cryptography=True) or []
    leaf = res.conn.get_peer_certificate(as_cryptography=True)
    if leaf is not None and (not chain or chain[0] != leaf):
        chain = [leaf, *chain]
    return chain


def chain_pems(res: HandshakeResult) -> list[str]:
    """The peer's chain as PEM blocks (``--json``'s ``peer_certificates``)."""
    return [c.public_bytes(serialization.Encoding.PEM).decode() for c in peer_chain(res)]


def showcerts_text(res: HandshakeResult) -> str:
    """``s_client -showcerts``'s block: each certificate's subject and issuer,
    then its PEM, between ``---`` lines."""
    parts = ["---\nCertificate chain\n"]
    for i, cert in enumerate(peer_chain(res)):
        parts.append(f"{i:2d} s:{oneline(cert.subject)}\n   i:{oneline(cert.issuer)}\n")
        parts.append(cert.public_bytes(serialization.Encoding.PEM).decode())
    parts.append("---\n")
    return "".join(parts)


def brief_lines(res: HandshakeResult, verification: str, offload: str) -> str:
    """``s_client -brief``'s summary, with the ALPN protocol and the offload."""
    lines = [
        "CONNECTION ESTABLISHED",
        f"Protocol version: {res.version_name}",
        f"Ciphersuite: {res.cipher_name}",
    ]
    leaf = res.conn.get_peer_certificate(as_cryptography=True)
    lines.append(f"Peer certificate: {oneline(leaf.subject) if leaf is not None else 'none'}")
    lines.append(f"Verification: {verification}")
    if res.alpn:
        lines.append(f"ALPN protocol: {res.alpn}")
    lines.append(f"Offload: {offload}")
    return "\n".join(lines) + "\n"
