"""Make ``openssl_records.json``: records OpenSSL sealed, with the keys to check them.

For each case a real ``openssl s_server`` and ``openssl s_client`` (OpenSSL 3,
the binaries) finish a handshake on loopback through a recording relay;
``s_client`` writes its secrets with ``-keylogfile``, sends a few chunks of
known data and closes with close_notify.  The client-to-server records after
the handshake are kept with everything needed to seal and open them again:

* TLS 1.2 - ``CLIENT_RANDOM`` (master secret) from the key log, the server
  random from the captured ServerHello, the key block by the TLS 1.2 PRF
  (RFC 5246 5) - written here with the standard library's ``hmac``, sharing
  no code with ``offload.keys`` - giving client_write_key and client_write_IV;
  the first record under the new keys is Finished (seq 0).
* TLS 1.3 - ``CLIENT_TRAFFIC_SECRET_0`` from the key log, key and IV by
  HKDF-Expand-Label (RFC 8446 7.1, again ``hmac`` only); the first
  application record is seq 0.  ``-record_padding`` makes OpenSSL pad.

Every record is opened here with ``cryptography``'s AEAD from the RFC
formulas (RFC 5288, RFC 7905, RFC 8446 5.2-5.3) and its plaintext compared
with what was written to ``s_client``, so the file only holds records that
decrypt to the data sent.  Nothing in ``offload`` runs here.

Usage: python tests/vectors/make_openssl_records.py > tests/vectors/openssl_records.json
"""

from __future__ import annotations

import hmac
import json
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

# What s_client sends, one write (so one record) each: short, binary, longer.
CHUNKS = [
    b"GET /known-answer HTTP/1.0\n",
    bytes(range(256)),
    bytes(i * 7 % 251 for i in range(3000)),
]


@dataclass(frozen=True)
class Case:
    name: str
    version: str  # "1.2" / "1.3"
    cipher: str  # offload.uapi.CipherType name
    openssl: list[str]  # s_client/s_server options choosing the suite
    hash_name: str  # PRF / HKDF hash
    key_len: int
    iv_len: int  # TLS 1.2: client_write_IV bytes; TLS 1.3: 12
    client_extra: tuple[str, ...] = ()


CASES = [
    Case(
        "tls12-aes128gcm",
        "1.2",
        "AES_GCM_128",
        ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
        "sha256",
        16,
        4,
    ),
    Case(
        "tls12-aes256gcm",
        "1.2",
        "AES_GCM_256",
        ["-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"],
        "sha384",
        32,
        4,
    ),
    Case(
        "tls12-aes128ccm",
        "1.2",
        "AES_CCM_128",
        ["-tls1_2", "-cipher", "DHE-RSA-AES128-CCM"],
        "sha256",
        16,
        4,
    ),
    Case(
        "tls12-chacha20",
        "1.2",
        "CHACHA20_POLY1305",
        ["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"],
        "sha256",
        32,
        12,
    ),
    Case(
        "tls13-aes256gcm",
        "1.3",
        "AES_GCM_256",
        ["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
        "sha384",
        32,
        12,
    ),
    Case(
        "tls13-chacha20-padded",
        "1.3",
        "CHACHA20_POLY1305",
        ["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
        "sha256",
        32,
        12,
        ("-record_padding", "512"),
    ),
    Case(
        "tls13-aes128ccm",
        "1.3",
        "AES_CCM_128",
        ["-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256"],
        "sha256",
        16,
        12,
    ),
]


def _prf(hash_name: str, secret: bytes, label: bytes, seed: bytes, n: int) -> bytes:
    """RFC 5246 section 5: PRF(secret, label, seed) = P_hash(secret, label + seed)."""
    seed = label + seed
    out = b""
    a = seed
    while len(out) < n:
        a = hmac.digest(secret, a, hash_name)
        out += hmac.digest(secret, a + seed, hash_name)
    return out[:n]


def _expand_label(hash_name: str, secret: bytes, label: bytes, n: int) -> bytes:
    """RFC 8446 section 7.1: HKDF-Expand-Label(secret, label, "", n)."""
    full = b"tls13 " + label
    info = struct.pack(">H", n) + bytes([len(full)]) + full + b"\x00"
    out = b""
    block = b""
    i = 1
    while len(out) < n:
        block = hmac.digest(secret, block + info + bytes([i]), hash_name)
        out += block
        i += 1
    return out[:n]


def _records(stream: bytes) -> list[bytes]:
    out = []
    while stream:
        n = int.from_bytes(stream[3:5], "big")
        out.append(stream[: 5 + n])
        stream = stream[5 + n :]
    return out


def _aead(cipher: str, key: bytes) -> AESGCM | AESCCM | ChaCha20Poly1305:
    if cipher == "CHACHA20_POLY1305":
        return ChaCha20Poly1305(key)
    if cipher == "AES_CCM_128":
        return AESCCM(key, tag_length=16)
    return AESGCM(key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _relay(listener: socket.socket, server_port: int, c2s: bytearray, s2c: bytearray) -> None:
    client, _ = listener.accept()
    server = socket.create_connection(("127.0.0.1", server_port))

    def pump(src: socket.socket, dst: socket.socket, log: bytearray) -> None:
        while data := src.recv(65536):
            log += data
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=pump, args=(server, client, s2c))
    t.start()
    pump(client, server, c2s)
    t.join(30)
    client.close()
    server.close()


def _session(case: Case, tmp: Path, cert: Path, key: Path) -> tuple[bytes, bytes, str]:
    """(client-to-server bytes, server-to-client bytes, key log text)."""
    sport = _free_port()
    server = subprocess.Popen(
        [
            "openssl",
            "s_server",
            "-accept",
            str(sport),
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-quiet",
            *case.openssl,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:  # until it listens (the probe costs it one failed handshake)
        try:
            socket.create_connection(("127.0.0.1", sport), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.1)
    listener = socket.create_server(("127.0.0.1", 0))
    c2s, s2c = bytearray(), bytearray()
    relay = threading.Thread(target=_relay, args=(listener, sport, c2s, s2c), daemon=True)
    relay.start()
    keylog = tmp / f"{case.name}.keys"
    client = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{listener.getsockname()[1]}",
            "-keylogfile",
            str(keylog),
            "-quiet",
            "-no_ign_eof",
            "-nocommands",
            *case.openssl,
            *case.client_extra,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert client.stdin is not None
    try:
        time.sleep(1.5)  # the handshake
        for chunk in CHUNKS:
            client.stdin.write(chunk)
            client.stdin.flush()
            time.sleep(0.5)  # one read of stdin, one record
        client.stdin.close()  # EOF: s_client sends close_notify and exits
        client.wait(20)
        relay.join(20)
    finally:
        for proc in (client, server):
            proc.kill()
            proc.wait(5)
        listener.close()
    return bytes(c2s), bytes(s2c), keylog.read_text()


def _keylog(text: str, label: str) -> tuple[bytes, bytes]:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == label:
            return bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
    raise LookupError(label)


def _make(case: Case, tmp: Path, cert: Path, key: Path) -> dict[str, Any]:
    c2s, s2c, keylog = _session(case, tmp, cert, key)
    records = _records(c2s)
    out: dict[str, Any] = {"name": case.name, "version": case.version, "cipher": case.cipher}
    if case.version == "1.2":
        client_random, master = _keylog(keylog, "CLIENT_RANDOM")
        hello = _records(s2c)[0]
        assert hello[0] == 22 and hello[5] == 2, "ServerHello first"
        server_random = hello[5 + 4 + 2 : 5 + 4 + 2 + 32]
        block = _prf(
            case.hash_name,
            master,
            b"key expansion",
            server_random + client_random,
            2 * (case.key_len + case.iv_len),
        )
        wkey = block[: case.key_len]
        wiv = block[2 * case.key_len : 2 * case.key_len + case.iv_len]
        protected = records[[r[0] for r in records].index(20) + 1 :]
        out.update(
            client_random=client_random.hex(),
            server_random=server_random.hex(),
            keylog_label="CLIENT_RANDOM",
            secret=master.hex(),
        )
        explicit = case.cipher != "CHACHA20_POLY1305"
        out.update(
            key=wkey.hex(),
            salt=wiv.hex() if explicit else "",
            iv=(protected[0][5:13] if explicit else wiv).hex(),
            first_seq=0,
        )
    else:
        client_random, secret = _keylog(keylog, "CLIENT_TRAFFIC_SECRET_0")
        wkey = _expand_label(case.hash_name, secret, b"key", case.key_len)
        wiv = _expand_label(case.hash_name, secret, b"iv", 12)
        # The client's first protected record is its Finished (handshake keys).
        protected = [r for r in records if r[0] == 23][1:]
        salt = b"" if case.cipher == "CHACHA20_POLY1305" else wiv[:4]
        out.update(
            client_random=client_random.hex(),
            keylog_label="CLIENT_TRAFFIC_SECRET_0",
            secret=secret.hex(),
            key=wkey.hex(),
            salt=salt.hex(),
            iv=wiv[len(salt) :].hex(),
            first_seq=0,
        )
    aead = _aead(case.cipher, wkey)
    rows: list[dict[str, Any]] = []
    for seq, rec in enumerate(protected):
        header, body = rec[:5], rec[5:]
        pad = 0
        if case.version == "1.3":
            nonce = bytes(a ^ b for a, b in zip(wiv, seq.to_bytes(12, "big"), strict=True))
            inner = aead.decrypt(nonce, body, header)
            stripped = inner.rstrip(b"\0")
            pad = len(inner) - len(stripped)
            ctype, plain = stripped[-1], stripped[:-1]
        else:
            if case.cipher == "CHACHA20_POLY1305":
                nonce = bytes(a ^ b for a, b in zip(wiv, seq.to_bytes(12, "big"), strict=True))
            else:
                nonce, body = wiv + body[:8], body[8:]
            aad = seq.to_bytes(8, "big") + header[:3] + (len(body) - 16).to_bytes(2, "big")
            ctype, plain = header[0], aead.decrypt(nonce, body, aad)
        rows.append(
            {
                "seq": seq,
                "type": ctype,
                "padding": pad,
                "plaintext": plain.hex(),
                "record": rec.hex(),
            }
        )
    data = [bytes.fromhex(r["plaintext"]) for r in rows if r["type"] == 23]
    assert data == CHUNKS, f"{case.name}: records do not carry the chunks sent"
    assert rows[-1]["type"] == 21 and rows[-1]["plaintext"] == "0100", "close_notify last"
    out["records"] = rows
    return out


def main() -> None:
    print(
        subprocess.run(
            ["openssl", "version"], capture_output=True, text=True, check=True
        ).stdout.strip(),
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-days",
                "1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        cases = [_make(case, tmp, cert, key) for case in CASES]
    version = subprocess.run(
        ["openssl", "version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    doc = {
        "_source": [
            f"Records sealed by {version} (openssl s_client, client to server), captured",
            "on loopback by tests/vectors/make_openssl_records.py, which documents how the keys",
            "were derived from s_client's -keylogfile (standard-library hmac, not offload.keys).",
            "TLS 1.2: key/salt are client_write_key/client_write_IV, iv the first record's",
            "explicit nonce (AES) or the 12-byte IV (ChaCha20), as crypto_info holds them;",
            "seq 0 is the client's Finished. TLS 1.3: key/salt+iv from CLIENT_TRAFFIC_SECRET_0;",
            "seq 0 is the first application record. 'type' is the (inner) content type,",
            "'padding' the zero bytes OpenSSL added (-record_padding).",
        ],
        "cases": cases,
    }
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
