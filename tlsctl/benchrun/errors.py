"""What can go wrong in a bench run, as the two cases the caller treats apart."""

from __future__ import annotations


class BenchError(Exception):
    """A transfer failed or could not be verified, or the set-up failed; one
    line for the user (the whole run fails: a number that was not confirmed
    is not reported)."""


class ModeUnavailable(BenchError):
    """The mode cannot run with these settings (e.g. the NIC declined the
    negotiated cipher): the mode is reported as skipped, the others run."""
