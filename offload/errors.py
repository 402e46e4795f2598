"""OSErrors with the errno Linux kTLS returns.

The layer reports every failure as ``OSError(errno, message)`` so callers can
handle it exactly as they would a failing ``setsockopt``/``sendmsg`` on a
kTLS socket.  The message names the reason but never carries key material.
"""

from __future__ import annotations

import os


def os_error(code: int, detail: str = "") -> OSError:
    """An ``OSError`` whose errno is ``code`` and whose text says why."""
    text = os.strerror(code)
    if detail:
        text = f"{text} ({detail})"
    return OSError(code, text)


class NoContentType(OSError):
    """A TLS 1.3 record whose inner plaintext is all zeros (EBADMSG).

    Linux reports it as EBADMSG like a bad tag; the subclass lets a control
    plane answer with unexpected_message (RFC 8446 5.4) instead of
    bad_record_mac without matching message text.
    """


class OuterTypeMismatch(OSError):
    """A TLS 1.3 record whose header type is not application_data and whose
    tag did not verify (EBADMSG, sticky like any bad tag).

    Linux authenticates every TLS 1.3 record with application_data (23) in
    the additional data, whatever the header says (``tls_make_aad``), so a
    record sealed over its real header of type 20, 21 or 22 (RFC 8446 5.2)
    fails there as a bad tag; one sealed over 23 whose header was changed
    afterwards is accepted.  Linux has no such distinction: the subclass and
    ``content_type`` (the header's type) let user space decide the alert
    (OpenSSL answers any protected record of another type with
    unexpected_message).
    """

    def __init__(self, code: int, text: str, content_type: int) -> None:
        super().__init__(code, text)
        self.content_type = content_type


class StreamAbort(OSError):
    """A receive error Linux reports once, then leaves the socket stopped.

    A framing error (bad version, oversized or undersized record) or the
    record sequence number wrapping makes net/tls call ``tls_err_abort``:
    the error is read once (``sock_error`` clears ``sk_err``) and the record
    parser stays stopped, so later reads see no data - only EOF or a
    timeout.  A bad tag, by contrast, fails every read (plain OSError).
    """


def abort_error(code: int, detail: str = "") -> StreamAbort:
    """A :class:`StreamAbort` with the errno Linux gives."""
    err = os_error(code, detail)
    return StreamAbort(code, err.strerror)


class ShortRecord(StreamAbort):
    """A record shorter than the cipher's overhead (EBADMSG, stream aborted).

    ``tls_rx_msg_size`` rejects it from the header alone, before anything is
    decrypted: a plaintext ChangeCipherSpec (1 byte) sent in TLS 1.3 after
    the handshake ends here.  Linux has no such distinction: the subclass
    carries the header's ``content_type`` so user space can decide the alert
    (OpenSSL: unexpected_message for a TLS 1.3 record that is not
    application_data, bad_record_mac for TLS 1.2).
    """

    def __init__(self, code: int, text: str, content_type: int) -> None:
        super().__init__(code, text)
        self.content_type = content_type
