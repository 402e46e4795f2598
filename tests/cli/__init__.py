"""Tests of the tlsctl commands and the library modules under ``tlsctl/``.

See ``tests/__init__.py`` for what goes where.
"""
