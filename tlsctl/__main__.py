"""``python -m tlsctl``: the same as the ``tlsctl`` script (no PATH needed)."""

from tlsctl.cli import run

run()
