"""What can go wrong in a bench run, as the two cases the caller treats apart."""

from __future__ import annotations


class BenchError(Exception):
    """A transfer failed or could not be verified, or the set-up failed; one
    line for the user (the whole run fails: a number that was not confirmed
    is not reported).  ``option``: the command-line option it is about
    (``-connect`` for a remote server's failures), for ``--json``'s error
    object; it survives the trip from a sender process (pickling)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option

    def __reduce__(self) -> tuple[type[BenchError], tuple[str, str | None]]:
        return (type(self), (str(self), self.option))


class ModeUnavailable(BenchError):
    """The mode cannot run with these settings (e.g. the NIC declined the
    negotiated cipher): the mode is reported as skipped, the others run."""
