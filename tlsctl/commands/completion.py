"""``tlsctl completion bash|zsh|fish``: print the shell completion script.

The scripts are click's: tiny shims that call back into ``tlsctl`` with
``_TLSCTL_COMPLETE`` set, so completions always follow the installed
commands and options (plug-ins included).  ``completions/`` holds the same
scripts for packagers; a test fails when they are stale.
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")
PROG = "tlsctl"
COMPLETE_VAR = "_TLSCTL_COMPLETE"


def completion_script(shell: str) -> str:
    """The completion script for ``shell`` (what ``completions/`` holds)."""
    from tlsctl.cli import cli

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click knows all three
        raise click.ClickException(f"no completion support for {shell}")
    return cls(cli, {}, PROG, COMPLETE_VAR).source()


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    Examples:
      eval "$(tlsctl completion bash)"                     # this shell only
      tlsctl completion bash > /etc/bash_completion.d/tlsctl
      tlsctl completion zsh > "${fpath[1]}/_tlsctl"
      tlsctl completion fish > ~/.config/fish/completions/tlsctl.fish
    """
    click.echo(completion_script(shell), nl=False)
