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
