"""The real wire (issue 13): the NIC under the kernel's own TCP, in its own process.

The in-process wire model (``offload.wiremodel``) segments and "retransmits"
as this project imagines TCP; this package puts the simulated NIC where a
NIC is: between two network namespaces whose real kernel TCP stacks do all
segmentation, retransmission and acknowledgement, in a process of its own.

* ``netns``    - the namespaces, links and the NIC process (``NetnsWire``);
* ``tun``      - TUN devices with virtio headers (GSO frames up to 64 KiB);
* ``frames``   - the NIC's parser (flow, sequence number, payload);
* ``nic``      - the NIC process: flows, the driver, control;
* ``forwarding`` - its loop moving frames between the TUNs (faults before or after the NIC);
* ``nic_rx``   - the NIC process's receive direction: RX offload (decrypt, mark);
* ``faults``   - seeded drop/dup/reorder/delay on real frames (after the NIC
  away from the host, before it towards the host);
* ``control``  - the host <-> NIC request channel (``tls_dev_add`` ...);
* ``recstore`` - the host's record store in shared memory (resync reads);
* ``rxring``   - the RX mark ring in shared memory (``decrypted`` marks, resync calls);
* ``txpath``   - the host side: a ``TxPath`` writing framed records to real TCP;
* ``rxpath``   - the host side: an ``RxPath`` reading real TCP with the NIC's marks.

It lives in ``offload/`` because it is the layer's other device path, next
to ``offload.wiremodel.TxPipeline``: nothing in it knows the CLI.
"""
