"""The ``--faults`` syntax, one parser for both wires.

``drop=0.01,reorder=0.02,seed=7``: probabilities in [0, 1] by name, an
integer seed, and whatever bounded extras a wire has (the real wire's
``delay`` in milliseconds).  The in-process model (:mod:`offload.wiremodel`)
and the real wire (:mod:`offload.netwire.faults`) differ only in which names
they know and which they refuse, so they share this parser rather than keep
two copies of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def parse_faults(
    text: str,
    kinds: Sequence[str],
    *,
    limits: Mapping[str, tuple[float, float, str]] | None = None,
    refused: Mapping[str, str] | None = None,
) -> dict[str, float | int]:
    """The values named in ``text``; ValueError with one line naming what is wrong.

    ``kinds`` are probabilities; ``limits`` maps other names to (low, high,
    what the value is); ``refused`` maps names this wire does not take to
    the whole error message.
    """
    limits = limits or {}
    refused = refused or {}
    values: dict[str, float | int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = (s.strip() for s in part.partition("="))
        if name in refused:
            raise ValueError(refused[name])
        if not sep:
            raise ValueError(f"fault {name!r} needs a value (e.g. {name}=0.01)")
        if name == "seed":
            try:
                values["seed"] = int(raw)
            except ValueError:
                raise ValueError(f"seed must be an integer, not {raw!r}") from None
            continue
        if name not in kinds and name not in limits:
            known = ", ".join((*kinds, *limits, "seed"))
            raise ValueError(f"unknown fault {name!r} (known: {known})")
        try:
            v = float(raw)
        except ValueError:
            what = "a probability" if name in kinds else "a number"
            raise ValueError(f"{name} must be {what}, not {raw!r}") from None
        if name in limits:
            low, high, what = limits[name]
            if not low <= v <= high:
                raise ValueError(f"{name}={raw} is not {what}")
        elif not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}={raw} is not a probability in [0, 1]")
        values[name] = v
    return values
