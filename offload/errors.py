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
