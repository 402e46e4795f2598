"""Exit statuses of every ``tlsctl`` command, in one place.

A script (or CI job) must be able to tell "the peer got every byte" from
"something went wrong", and a local mistake from a transfer that did not
complete.  click already uses 1 for a :class:`click.ClickException` and 2
for a usage error; the rest follow the shell's 128+signal convention.
"""

from __future__ import annotations

from enum import IntEnum

import click


class ExitStatus(IntEnum):
    """What a command's exit status means (the README's table lists them per command)."""

    OK = 0
    """Every byte reached the peer and the connection ended with close_notify
    (``serve``: every connection it handled ended that way)."""
    FAILED = 1
    """A local failure before or outside the transfer: a file that cannot be
    opened, no connection, a failed handshake or certificate check
    (``doctor``: kTLS is not usable on this host)."""
    USAGE = 2
    """Bad options or arguments (click's usage error)."""
    INCOMPLETE = 3
    """A transfer did not complete: the peer closed, reset or sent a fatal
    alert before every byte and both close_notifys were through, or a stream
    ended without close_notify (``serve``: at least one connection did)."""
    INTERRUPTED = 130
    """Stopped by SIGINT (128 + 2); what was sent so far is reported."""
    TERMINATED = 143
    """Stopped by SIGTERM (128 + 15)."""


class CommandFailed(click.ClickException):
    """A one-line error with a chosen exit status (``ExitStatus``)."""

    def __init__(self, message: str, status: ExitStatus = ExitStatus.FAILED) -> None:
        super().__init__(message)
        self.status = status
        vars(self)["exit_code"] = int(status)  # click's class attribute, per instance
