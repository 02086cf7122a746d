"""The rollout controller: on the leader, moves every active rollout along.

Each tick (``interval_s``) it reads the active rollouts from the registry and the
routers' latest figures from the coordination backend, then for each rollout:

- a wave whose workers are starting (``step == -1``): the new version is placed in the
  wave's regions; once every one of them has a routable worker of it in the published
  snapshot, the first step begins (after ``ready_timeout_s`` without: roll back);
- a step: every region of the wave is judged over the step's window (``gates.judge``);
  one ``fail`` rolls the whole rollout back, all ``pass`` moves to the next step, the
  next wave, or completes it;
- ``promoting``: the same moves, with the gates' verdicts not waited for;
- ``paused``: nothing moves (the weights stay as they are).

It also tells the snapshot which deployments routers mirror requests to (the new version
in the current wave's regions while its share is below 1). Windows live in memory: a new
leader starts the current step's window afresh, where the registry says the rollout is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from control_plane.rollouts.gates import RegionWindow, Verdict, judge
from control_plane.rollouts.ops import RolloutOps
from control_plane.rollouts.schemas import RolloutPublic
from control_plane.rollouts.window import FigureLedger, RouterReport, Window
from meridian.figures import VersionFigures
from meridian.snapshot import RoutingSnapshot

__all__ = ["Mirror", "RolloutController"]

log = logging.getLogger(__name__)

Mirror = tuple[float, str]  # share of the old version's requests, how replies are compared
MirrorKey = tuple[str, str, str]  # model, version, region


@dataclass
class _Step:
    position: tuple[int, int]
    window: Window
    opened: float  # monotonic
    last_recorded: float = 0.0


class RolloutController:
    def __init__(
        self,
        ops: RolloutOps,
        *,
        reports: Callable[[], Awaitable[list[RouterReport]]],
        snapshot: Callable[[], RoutingSnapshot | None],
        on_change: Callable[[], None],
        set_mirrors: Callable[[dict[MirrorKey, Mirror]], None],
        interval_s: float = 0.5,
        record_every_s: float = 2.0,
    ) -> None:
        self._ops = ops
        self._reports = reports
        self._snapshot = snapshot
        self._on_change = on_change
        self._set_mirrors = set_mirrors
        self.interval_s = interval_s
        self._record_every = record_every_s
        self.ledger = FigureLedger()
        self._steps: dict[int, _Step] = {}
        # the old version's figures per (rollout, region) from its last window with enough
        self._references: dict[tuple[int, str], VersionFigures] = {}
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next tick retries; the leader's work goes on
                log.warning("rollout tick failed: %s", exc, exc_info=True)

    async def tick(self) -> None:
        self.ticks += 1
        rollouts = await asyncio.to_thread(self._ops.active_rollouts)
        self.ledger.update(await self._reports())
        mirrors: dict[MirrorKey, Mirror] = {}
        for rollout in rollouts:
            await self._advance(rollout, mirrors)
        live = {r.id for r in rollouts}
        for gone in [k for k in self._steps if k not in live]:
            del self._steps[gone]
        self._set_mirrors(mirrors)

    # --- one rollout -------------------------------------------------------------------

    async def _advance(self, r: RolloutPublic, mirrors: dict[MirrorKey, Mirror]) -> None:
        if r.state == "paused":
            self._steps.pop(r.id, None)  # the window starts again on resume
            return
        now = time.monotonic()
        if r.step < 0:
            await self._start_wave(r, now)
            return
        step = self._steps.get(r.id)
        if step is None or step.position != (r.wave, r.step):
            step = self._steps[r.id] = _Step((r.wave, r.step), Window.opening(self.ledger), now)
        share = r.steps[r.step]
        compare = r.gates.compare
        if compare not in ("none", "auto") and share < 1.0 and r.gates.mirror_share > 0:
            for region in r.waves[r.wave]:
                mirrors[(r.model, r.to_version, region)] = (r.gates.mirror_share, compare)
        verdicts = {region: self._judge(r, step, region, now) for region in r.waves[r.wave]}
        figures = {region: _public(v) for region, v in verdicts.items()}
        failed = {region: v for region, v in verdicts.items() if v.outcome == "fail"}
        if failed and r.state != "promoting":
            reason = "; ".join(f"{region}: {', '.join(v.reasons)}" for region, v in failed.items())
            log.warning("rollout %d of %s rolls back: %s", r.id, r.model, reason)
            await asyncio.to_thread(
                self._ops.finish_rollout, r.id, "rolled_back", f"gate failed in {reason}", figures
            )
            self._steps.pop(r.id, None)
            self._on_change()
            return
        passed = all(v.outcome == "pass" for v in verdicts.values())
        if passed or r.state == "promoting":
            for region, v in verdicts.items():
                if v.outcome == "pass":
                    self._remember_reference(r, step, region)
            await self._next(r, figures)
            return
        if now - step.last_recorded >= self._record_every:
            step.last_recorded = now
            await asyncio.to_thread(self._ops.record_figures, r.id, figures)

    def _judge(self, r: RolloutPublic, step: _Step, region: str, now: float) -> Verdict:
        window = RegionWindow(
            region=region,
            new=step.window.figures(self.ledger, (r.model, r.to_version, region)),
            old=step.window.figures(self.ledger, (r.model, r.from_version, region)),
            elapsed_s=now - step.opened,
            share=r.steps[r.step],
            reference=self._references.get((r.id, region)),
            compare=r.gates.compare if r.gates.mirror_share > 0 else "none",
        )
        return judge(r.gates, window, r.bake_s)

    def _remember_reference(self, r: RolloutPublic, step: _Step, region: str) -> None:
        old = step.window.figures(self.ledger, (r.model, r.from_version, region))
        if old.requests >= r.gates.min_requests:
            self._references[(r.id, region)] = old

    async def _next(self, r: RolloutPublic, figures: dict[str, Any]) -> None:
        if r.step + 1 < len(r.steps):
            wave, step = r.wave, r.step + 1
            reason = f"wave {wave + 1}: {r.steps[step]:.0%} of traffic"
        elif r.wave + 1 < len(r.waves):
            wave, step = r.wave + 1, -1
            reason = f"wave {wave + 1}: starting the new version's workers"
        else:
            await asyncio.to_thread(
                self._ops.finish_rollout, r.id, "completed",
                "every wave reached 100% with every gate holding"
                if r.state != "promoting" else "promoted by an operator", figures,
            )  # fmt: skip
            self._steps.pop(r.id, None)
            self._on_change()
            return
        await asyncio.to_thread(
            self._ops.move_rollout, r.id, wave, step, figures, reason, expect=(r.wave, r.step)
        )
        self._steps.pop(r.id, None)
        self._on_change()

    async def _start_wave(self, r: RolloutPublic, now: float) -> None:
        step = self._steps.get(r.id)
        if step is None or step.position != (r.wave, -1):  # once per wave (and leader term)
            placed = await asyncio.to_thread(self._ops.deploy_wave, r.id, r.wave)
            if placed:
                self._on_change()
            step = self._steps[r.id] = _Step((r.wave, -1), Window.opening(self.ledger), now)
        snap = self._snapshot()
        key = f"{r.model}:{r.to_version}"
        waiting = [region for region in r.waves[r.wave] if not _serves(snap, region, key)]
        if not waiting:
            reason = f"wave {r.wave + 1}: {r.steps[0]:.0%} of traffic"
            await asyncio.to_thread(
                self._ops.move_rollout, r.id, r.wave, 0, {}, reason, expect=(r.wave, -1)
            )
            self._steps.pop(r.id, None)
            self._on_change()
        elif now - step.opened > r.gates.ready_timeout_s:
            reason = (f"the new version did not serve in {', '.join(waiting)} within "
                      f"{r.gates.ready_timeout_s:g} s")  # fmt: skip
            await asyncio.to_thread(self._ops.finish_rollout, r.id, "rolled_back", reason, {})
            self._steps.pop(r.id, None)
            self._on_change()


def _serves(snap: RoutingSnapshot | None, region: str, key: str) -> bool:
    if snap is None:
        return False
    view = snap.region(region)
    return view is not None and any(w.state.routable and key in w.models for w in view.workers)


def _public(v: Verdict) -> dict[str, Any]:
    return {"verdict": v.outcome, "reasons": list(v.reasons), **v.figures}
