"""tlsctl's tests, as a package (so ``mypy --strict`` checks them like the code).

Where things go:

- ``offload/``: the offload layer (``offload/``): the SOL_TLS option codec and
  socket layer, record framing and known-answer vectors, device TX and the
  sim-nic, the real wire's NIC engine without namespaces, TCP sequence
  arithmetic, counters, keys, record fuzzing, and the same layer next to the
  real kernel's kTLS in a VM.
- ``cli/``: the ``tlsctl`` commands (send, serve, bench, inspect-context, -WWW,
  doctor (also in the kTLS VMs), completion, signals, exit verdicts, errors
  that say why, keylog, the summary's output, the file hash) run as real
  processes, and the library
  modules under ``tlsctl/`` they are thin shells over (session, channel,
  transfer, server, offloadmode, units).
- ``interop/``: tlsctl and the layer against independent TLS stacks and hostile
  peers: the handshake handoff, Finished in fragments, negotiated suites,
  KeyUpdate, malicious records, and the NIC on a real wire (network namespaces,
  the kernel's TCP) with and without faults.
- ``helpers/``: what tests import or run but is not a test: peer launchers
  (``peers``), an independent record codec (``wire``), the real-wire helpers
  (``netwire_helpers``), the tlslite-ng peer, the kernel VM runner
  (``kernelvm``) and the scenarios it runs inside the VM
  (``python -m tests.helpers.kernel_scenarios``, which registers the layer,
  edge, CLI and Finished-in-fragments scenarios).
- ``vectors/``: published and recorded known-answer data.

``conftest.py`` (shared fixtures) stays at the top, for every package.
"""
