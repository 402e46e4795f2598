"""Shell completion: the shipped scripts are current, and bash really completes.

The bash test sources the script the installed ``tlsctl`` prints into a real
bash, sets COMP_WORDS/COMP_CWORD as readline would, calls the completion
function and reads COMPREPLY: a subcommand, an option and a file name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tlsctl.cli import main
from tlsctl.commands.completion import SHELLS, completion_script

ROOT = Path(__file__).resolve().parents[2]
TLSCTL = Path(sys.executable).with_name("tlsctl")


@pytest.mark.parametrize("shell", SHELLS)
def test_shipped_scripts_are_current(shell: str) -> None:
    shipped = (ROOT / "completions" / f"tlsctl.{shell}").read_text()
    assert shipped == completion_script(shell), (
        f"completions/tlsctl.{shell} is stale: run "
        f"`tlsctl completion {shell} > completions/tlsctl.{shell}`"
    )


def test_bare_tlsctl_is_a_usage_error_and_help_is_not() -> None:
    """No command: usage and the command list on stderr, exit 2 (as git);
    ``--help``: the same on stdout, exit 0."""
    bare = subprocess.run([str(TLSCTL)], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2
    assert bare.stdout == ""
    assert bare.stderr.startswith("Usage: tlsctl") and "send" in bare.stderr
    helped = subprocess.run([str(TLSCTL), "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    assert helped.stdout.startswith("Usage: tlsctl") and "send" in helped.stdout


def test_completion_command_prints_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    assert "_tlsctl_completion" in capsys.readouterr().out
    assert main(["completion", "tcsh"]) == 2


def _bash_complete(words: list[str], cwd: Path) -> list[str]:
    if shutil.which("bash") is None:
        pytest.fail("bash is required for the completion test")
    script = subprocess.run(
        [str(TLSCTL), "completion", "bash"], capture_output=True, text=True, check=True
    ).stdout
    line = " ".join(words)
    # Outside readline, compopt cannot act; record what the function asks
    # for and do what readline would: "-o default" completes file names,
    # "-o dirnames" directory names.
    prog = f"""
{script}
compopt() {{
    [[ "$*" == *default* ]] && TLSCTL_DEFAULT=f
    [[ "$*" == *dirnames* ]] && TLSCTL_DEFAULT=d
    return 0
}}
COMP_WORDS=({line})
COMP_CWORD={len(words) - 1}
_tlsctl_completion {TLSCTL}
if [[ ${{#COMPREPLY[@]}} -eq 0 && -n "$TLSCTL_DEFAULT" ]]; then
    COMPREPLY=($(compgen -$TLSCTL_DEFAULT -- "${{COMP_WORDS[COMP_CWORD]}}"))
fi
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**os.environ, "PATH": f"{TLSCTL.parent}:{os.environ.get('PATH', '')}"}
    res = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", prog],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return [w for w in res.stdout.splitlines() if w]


def test_bash_completes_subcommand(tmp_path: Path) -> None:
    got = _bash_complete(["tlsctl", "comp"], tmp_path)
    assert got == ["completion"]


def test_bash_completes_option(tmp_path: Path) -> None:
    got = _bash_complete(["tlsctl", "send", "--loo"], tmp_path)
    assert got == ["--loopback"]


def test_bash_completes_file_name(tmp_path: Path) -> None:
    (tmp_path / "payload-64M.bin").write_bytes(b"x")
    (tmp_path / "other.txt").write_bytes(b"y")
    got = _bash_complete(["tlsctl", "completion", "ba"], tmp_path)
    assert got == ["bash"]
    got = _bash_complete(["tlsctl", "send", "pay"], tmp_path)
    assert got == ["payload-64M.bin"]


@pytest.mark.parametrize(
    ("words", "want"),
    [
        (["serve", "-o", "p"], ["pay.bin", "pdir"]),  # a file (new, or a dir to reach it)
        (["serve", "--save-dir", "p"], ["pdir"]),
        (["serve", "-WWW", "p"], ["pdir"]),
        (["send", "-keylogfile", "p"], ["pay.bin", "pdir"]),
        (["bench", "--modes", "s"], ["sw", "sim-nic"]),
        (["bench", "--modes", "tcp,s"], ["tcp,sw", "tcp,sim-nic"]),
        (["bench", "--modes", "sw,s"], ["sw,sim-nic"]),  # no name twice
    ],
)
def test_bash_completes_option_values(tmp_path: Path, words: list[str], want: list[str]) -> None:
    """Paths after -o/--save-dir/-WWW/-keylogfile (directories only where a
    directory is wanted) and mode names inside --modes' comma list."""
    (tmp_path / "pay.bin").write_bytes(b"x")
    (tmp_path / "pdir").mkdir()
    assert sorted(_bash_complete(["tlsctl", *words], tmp_path)) == sorted(want)


@pytest.mark.parametrize("command", ["send", "serve"])
def test_help_and_completion_load_only_the_cli(command: str) -> None:
    """``--help`` (and completing an option, which builds the same command)
    imports the click layer only: not pyOpenSSL, h11, the channel, the
    transfer or the server library, nor the record layer (``offload``
    loads ``KTLSSocket`` on first use), which the command loads when it
    runs."""
    code = (
        "import sys\n"
        "from tlsctl.cli import main\n"
        f"assert main([{command!r}, '--help']) == 0\n"
        "heavy = ('OpenSSL', 'h11', 'tlsctl.session', 'tlsctl.transfer.', 'tlsctl.server.s',\n"
        "         'tlsctl.tlsconf', 'tlsctl.handshake', 'tlsctl.control', 'tlsctl.certs',\n"
        "         'offload.ktls_socket', 'offload.record', 'offload.wiremodel')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)), file=sys.stderr)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--offload" in r.stdout
    assert r.stderr.strip() == "[]"


def test_version_names_the_libraries_and_ktls() -> None:
    """``tlsctl --version``: tlsctl, Python, pyOpenSSL and cryptography with
    the OpenSSL each runs on, and this host's kTLS answer (the same probe
    ``--offload kernel`` relies on)."""
    from importlib.metadata import version

    from offload.kernel import kernel_has_ktls

    r = subprocess.run([str(TLSCTL), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"tlsctl {version('tlsctl')}"
    assert lines[1].startswith("Python 3.")
    assert lines[2].startswith(f"pyOpenSSL {version('pyOpenSSL')} (OpenSSL ")
    assert lines[3].startswith(f"cryptography {version('cryptography')} (OpenSSL ")
    ok, why = kernel_has_ktls()
    assert lines[4] == (
        "kTLS on this host: yes" if ok else f"kTLS on this host: no: {why}; tlsctl doctor says more"
    )


def test_bash_completes_doctor(tmp_path: Path) -> None:
    assert _bash_complete(["tlsctl", "doc"], tmp_path) == ["doctor"]
    assert _bash_complete(["tlsctl", "doctor", "--j"], tmp_path) == ["--json"]
