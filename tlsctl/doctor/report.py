"""What ``tlsctl doctor`` found: one :class:`Check` per question, typed.

Every check answers yes (``ok=True``), no (``ok=False``, with ``reason`` and
``fix``) or "does not apply here" (``ok=None``, e.g. the cipher probes when
the ``tls`` ULP does not even attach).  ``required`` checks decide whether
kTLS is usable at all; the rest are features (rekey, NIC offload, the TLS
libraries) whose "no" is worth knowing but does not stop kTLS.  ``data``
holds the facts as numbers and booleans for ``--json``: scripts should not
have to parse the human ``detail`` line.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass, field
from typing import Any

JsonValue = bool | int | float | str | None | list[Any] | dict[str, Any]


@dataclass(frozen=True)
class Check:
    """One row of the diagnosis."""

    key: str
    """Stable identifier, the key in ``--json``'s ``checks`` (new keys may be
    added, none renamed)."""
    title: str
    ok: bool | None
    detail: str
    reason: str = ""
    """Why not (only when ``ok`` is False)."""
    fix: str = ""
    """What to do about it (only when ``ok`` is False)."""
    required: bool = False
    """kTLS is unusable when this check says no."""
    data: dict[str, JsonValue] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        """``yes`` / ``no`` / ``n/a``, the word the table shows."""
        return {True: "yes", False: "no", None: "n/a"}[self.ok]

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "title": self.title,
            "ok": self.ok,
            "required": self.required,
            "detail": self.detail,
            "reason": self.reason or None,
            "fix": self.fix or None,
        }
        out.update(self.data)
        return out


@dataclass(frozen=True)
class Report:
    """All checks, in the order they were made (the table's order)."""

    kernel_release: str
    checks: tuple[Check, ...]

    @property
    def usable(self) -> bool:
        """kTLS works here: every required check said yes."""
        return all(c.ok is True for c in self.checks if c.required)

    def get(self, key: str) -> Check:
        for c in self.checks:
            if c.key == key:
                return c
        raise KeyError(key)

    def blockers(self) -> list[Check]:
        """The required checks that said no (or could not be made)."""
        return [c for c in self.checks if c.required and c.ok is not True]

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "ktls_usable": self.usable,
            "kernel_release": self.kernel_release,
            "checks": {c.key: c.to_json() for c in self.checks},
        }


def errno_fields(exc: OSError | None) -> dict[str, JsonValue]:
    """``{"errno": 16, "errno_name": "EBUSY"}`` (both None without an error)."""
    if exc is None or exc.errno is None:
        return {"errno": None, "errno_name": None}
    return {"errno": exc.errno, "errno_name": _errno.errorcode.get(exc.errno, str(exc.errno))}


def errno_text(exc: OSError) -> str:
    """``EBUSY (Device or resource busy)``: the name a kTLS user greps for."""
    if exc.errno is None:
        return str(exc)
    name = _errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{name} ({exc.strerror})" if exc.strerror else name
