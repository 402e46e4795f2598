"""``-keylogfile`` / SSLKEYLOGFILE: secrets go where the user said, and only there.

The key log holds every session's secrets, so it is opened like a secret:
a symlink planted at the path (by another user, in a shared directory) is
refused and its target left untouched; a new file is 0600 whatever the
umask; an existing file someone else can read gets a one-line warning.  The
lines themselves stay in the NSS key log format Wireshark/tshark read.
Every case runs ``tlsctl`` as a process against its own loopback receiver.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers.peers import TLSCTL, spawn

pytestmark = pytest.mark.timeout(60)

# NSS key log: LABEL <client_random hex 64> <secret hex>
NSS_LINE = re.compile(
    r"(CLIENT_RANDOM|CLIENT_HANDSHAKE_TRAFFIC_SECRET|SERVER_HANDSHAKE_TRAFFIC_SECRET"
    r"|CLIENT_TRAFFIC_SECRET_0|SERVER_TRAFFIC_SECRET_0|EXPORTER_SECRET) [0-9a-f]{64} [0-9a-f]{64,}"
)
TLS12_LABELS = {"CLIENT_RANDOM"}
TLS13_LABELS = {
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
}


def tlsctl(
    *args: str, env: dict[str, str] | None = None, umask: int = 0o022
) -> subprocess.CompletedProcess[str]:
    cmd = [*TLSCTL, *args]
    with spawn(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        umask=umask,
    ) as proc:
        out, err = proc.communicate(timeout=45)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def send_loopback(
    *args: str, env: dict[str, str] | None = None, umask: int = 0o022
) -> subprocess.CompletedProcess[str]:
    return tlsctl(
        "send",
        "--loopback",
        "--size",
        "20000",
        "--offload",
        "sw",
        "-quiet",
        *args,
        env=env,
        umask=umask,
    )


def labels(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    assert lines and all(NSS_LINE.fullmatch(line) for line in lines), lines
    return [line.split()[0] for line in lines]


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """A link at the key log path pointing at a file that must not change."""
    target = tmp_path / "victim"
    target.write_text("precious\n")
    target.chmod(0o644)
    link = tmp_path / "keys.log"
    link.symlink_to(target)
    return link, target


@pytest.mark.parametrize("how", ["send", "send-env", "serve"])
def test_symlink_refused_target_untouched(how: str, planted: tuple[Path, Path]) -> None:
    link, target = planted
    if how == "send":
        r = send_loopback("-keylogfile", str(link))
    elif how == "send-env":
        r = send_loopback(env={"SSLKEYLOGFILE": str(link)})
    else:
        r = tlsctl("serve", "-accept", "127.0.0.1:0", "-naccept", "1", "-keylogfile", str(link))
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        f"Error: refusing key log file {link}: it is a symbolic link; give the real path"
    ]
    assert target.read_text() == "precious\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert link.is_symlink()


def test_dangling_symlink_creates_nothing(tmp_path: Path) -> None:
    link = tmp_path / "keys.log"
    link.symlink_to(tmp_path / "would-be-created")
    r = send_loopback("-keylogfile", str(link))
    assert r.returncode != 0 and "symbolic link" in r.stderr
    assert not (tmp_path / "would-be-created").exists()


@pytest.mark.parametrize(
    ("version", "expected"), [("-tls1_2", TLS12_LABELS), ("-tls1_3", TLS13_LABELS)]
)
def test_new_file_is_private_and_lines_land(
    version: str, expected: set[str], tmp_path: Path
) -> None:
    path = tmp_path / "keys.log"
    r = send_loopback(version, "-keylogfile", str(path), umask=0)  # a umask that hides nothing
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no warning for a file we created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The client's lines (the built-in --loopback receiver logs none).
    assert expected <= set(labels(path))


def test_existing_readable_file_warns_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    first = send_loopback("-tls1_3", "-keylogfile", str(path))
    assert first.returncode == 0, first.stderr
    before = path.read_text()
    path.chmod(0o644)
    r = send_loopback("-tls1_3", env={"SSLKEYLOGFILE": str(path)})
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"warning: key log file {path} is readable by group/others (mode 0644): "
        "whoever can read it can decrypt these sessions"
    ]
    after = path.read_text()
    assert after.startswith(before) and len(after) > len(before)  # appended, not replaced
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the user's file, the user's mode
    labels(path)


def test_private_existing_file_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    path.touch(mode=0o600)
    path.chmod(0o600)
    r = send_loopback("-keylogfile", str(path))
    assert r.returncode == 0 and r.stderr == ""
    assert set(labels(path)) >= TLS13_LABELS
