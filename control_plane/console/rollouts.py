"""The rollouts the console shows live: the active ones and those that finished lately.

:class:`RolloutBoard` reads them from the registry (any replica may: the leader's
controller writes every move and its gate figures there) at most every ``refresh_s``,
so the console's state carries them however often it is rebuilt; :func:`rollout_view`
(pure) is what one rollout looks like in that state.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from control_plane.rollouts.schemas import RolloutPublic

__all__ = ["RolloutBoard", "rollout_view"]

log = logging.getLogger(__name__)

# rollouts active or finished since the given time, newest first
ReadRollouts = Callable[[dt.datetime], list[RolloutPublic]]


def rollout_view(r: RolloutPublic) -> dict[str, Any]:
    """One rollout as the console's state carries it: where it is, why it got there, and
    the last gate figures and verdict per region of the current wave (its gates' settings
    are not carried: the rollout's page reads them once, with its ETag)."""
    return {
        "id": r.id,
        "model": r.model,
        "from_version": r.from_version,
        "to_version": r.to_version,
        "variant": r.variant,
        "state": r.state,
        "waves": r.waves,
        "steps": r.steps,
        "wave": r.wave,
        "step": r.step,
        "share": r.share,
        "bake_s": r.bake_s,
        "reason": r.reason,
        "figures": r.figures,
        "created_by": r.created_by,
        "created_at": r.created_at.isoformat(),
        "step_started_at": r.step_started_at.isoformat() if r.step_started_at else None,
        "finished_at": r.finished_at.isoformat() if r.finished_at else None,
        "row_version": r.row_version,
    }


class RolloutBoard:
    """The registry's current rollouts as the console shows them, read at most every
    ``refresh_s``; a rollout stays ``recent_s`` after it finished."""

    def __init__(
        self, read: ReadRollouts, *, refresh_s: float = 1.0, recent_s: float = 900.0
    ) -> None:
        self._read = read
        self.refresh_s = refresh_s
        self.recent_s = recent_s
        self._read_at = -float("inf")
        self.view: list[dict[str, Any]] = []

    async def refresh(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if now - self._read_at < self.refresh_s:
            return self.view
        self._read_at = now
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.recent_s)
        try:
            rollouts = await asyncio.to_thread(self._read, since)
        except Exception as exc:  # keep the last view while the database is away
            log.warning("reading rollouts for the console failed: %s", exc)
            return self.view
        self.view = [rollout_view(r) for r in rollouts]
        return self.view
