"""The ``tlsctl`` command: a click group whose commands load lazily.

Commands are found through the ``tlsctl.commands`` entry-point group, the
built-in ones registered exactly like third-party plug-ins (rasterio's
``rio`` pattern).  A command whose module fails to import shows up as a
broken command with a one-line error instead of taking the CLI down.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points, version
from typing import Any

import click

GROUP = "tlsctl.commands"


class _BrokenCommand(click.Command):
    """Stands in for a plug-in that failed to load."""

    def __init__(self, name: str, error: BaseException) -> None:
        super().__init__(name, help=f"(broken plug-in: {error})")
        self._error = error

    def invoke(self, ctx: click.Context) -> Any:
        raise click.ClickException(f"command {self.name!r} failed to load: {self._error}")


class LazyGroup(click.Group):
    """Loads each command's module only when that command runs."""

    def _eps(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._eps()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            return cmd
        ep = self._eps().get(cmd_name)
        if ep is None:
            return None
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken plug-in must not crash the CLI
            return _BrokenCommand(cmd_name, exc)
        if not isinstance(loaded, click.Command):
            return _BrokenCommand(cmd_name, TypeError("entry point is not a click command"))
        return loaded


def version_text() -> str:
    """``--version``: tlsctl's, and what a bug report needs beside it: the
    Python, the OpenSSL that pyOpenSSL and cryptography run on (they may
    differ from the ``openssl`` command's), and whether this host's kernel
    takes kTLS (``tlsctl doctor`` says why not)."""
    import platform

    from cryptography.hazmat.backends.openssl.backend import backend
    from OpenSSL import SSL

    from offload.kernel import kernel_has_ktls

    ok, why = kernel_has_ktls()
    linked = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    return "\n".join(
        [
            f"tlsctl {version('tlsctl')}",
            f"Python {platform.python_version()}",
            f"pyOpenSSL {version('pyOpenSSL')} ({linked})",
            f"cryptography {version('cryptography')} ({backend.openssl_version_text()})",
            f"kTLS on this host: {'yes' if ok else f'no: {why}; tlsctl doctor says more'}",
        ]
    )


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit(0)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Versions of tlsctl, Python, OpenSSL (as pyOpenSSL and cryptography "
    "use it) and whether this host has kTLS, then exit.",
)
def cli() -> None:
    """Kernel-style TLS offload: a Linux-compatible kTLS layer you can watch.

    \b
    Example:
      tlsctl send --loopback           # no set-up: handshake, keys to the layer, 64 MiB
      tlsctl serve -accept 4433 --sink # then: tlsctl send FILE -connect host:4433 -k
      tlsctl inspect-context           # live rec_seq, counters, NIC state
    """


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``main([...])`` runs in-process for tests."""
    try:
        cli.main(args=argv, prog_name="tlsctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.NoSuchOption as exc:
        whole = _whole_spelling(exc.option_name, sys.argv[1:] if argv is None else argv)
        shown = click.UsageError(f"no such option '{whole}'", ctx=exc.ctx) if whole else exc
        shown.show()
        return shown.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    return 0


def _whole_spelling(short: str, argv: list[str]) -> str | None:
    """The single-dash word click cut down to ``short`` (``-port`` read as
    ``-p`` ``ort``), for commands that do not check their own spellings
    (``send`` and ``serve`` do: :class:`tlsctl.commands._options.DialectCommand`)."""
    if len(short) != 2 or short.startswith("--"):
        return None
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith(short) and len(arg) > 2 and not arg.startswith("--"):
            return arg.split("=", 1)[0]
    return None


def run() -> None:
    """Console-script wrapper: exit with ``main``'s status."""
    sys.exit(main())


if __name__ == "__main__":
    run()
