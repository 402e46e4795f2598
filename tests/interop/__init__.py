"""tlsctl and the layer against independent TLS stacks and hostile peers.

See ``tests/__init__.py`` for what goes where.
"""
