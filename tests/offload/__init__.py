"""Tests of the offload layer (``offload/``); see ``tests/__init__.py``."""
