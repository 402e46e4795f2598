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

ROOT = Path(__file__).resolve().parent.parent
TLSCTL = Path(sys.executable).with_name("tlsctl")


@pytest.mark.parametrize("shell", SHELLS)
def test_shipped_scripts_are_current(shell: str) -> None:
    shipped = (ROOT / "completions" / f"tlsctl.{shell}").read_text()
    assert shipped == completion_script(shell), (
        f"completions/tlsctl.{shell} is stale: run "
        f"`tlsctl completion {shell} > completions/tlsctl.{shell}`"
    )


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
    # for and, for "-o default", do what readline would: complete file names.
    prog = f"""
{script}
compopt() {{ [[ "$*" == *default* ]] && TLSCTL_DEFAULT=1; return 0; }}
COMP_WORDS=({line})
COMP_CWORD={len(words) - 1}
_tlsctl_completion {TLSCTL}
if [[ ${{#COMPREPLY[@]}} -eq 0 && -n "$TLSCTL_DEFAULT" ]]; then
    COMPREPLY=($(compgen -f -- "${{COMP_WORDS[COMP_CWORD]}}"))
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
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, check=True)
    assert "--offload" in r.stdout
    assert r.stderr.strip() == "[]"


def test_bash_completes_doctor(tmp_path: Path) -> None:
    assert _bash_complete(["tlsctl", "doc"], tmp_path) == ["doctor"]
    assert _bash_complete(["tlsctl", "doctor", "--j"], tmp_path) == ["--json"]
