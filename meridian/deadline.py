"""The request deadline every process reads: ``x-meridian-deadline-ms``.

The header carries the milliseconds the client will still wait, relative to when the
request arrives (clocks of different machines never have to agree). The router passes
on what is left of it to the worker, so every hop sees the shrinking budget.
"""

from __future__ import annotations

import math

__all__ = ["DEADLINE_HEADER", "MAX_DEADLINE_MS", "parse_deadline_ms"]

DEADLINE_HEADER = b"x-meridian-deadline-ms"
MAX_DEADLINE_MS = 86_400_000.0  # one day: anything longer is a mistake, not a deadline


def parse_deadline_ms(value: bytes | None) -> float | None:
    """The deadline in milliseconds (None when absent); ``ValueError`` says what is wrong."""
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    try:
        ms = float(text)
    except ValueError:
        raise ValueError(
            f"header x-meridian-deadline-ms must be a number of milliseconds, got {text!r}"
        ) from None
    if not math.isfinite(ms) or ms <= 0 or ms > MAX_DEADLINE_MS:
        raise ValueError(
            f"header x-meridian-deadline-ms must be between 0 and {MAX_DEADLINE_MS:.0f} "
            f"milliseconds (exclusive of 0), got {text!r}"
        )
    return ms
