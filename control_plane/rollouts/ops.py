"""Rollouts in the registry: operators' requests and the controller's moves.

Every move changes the rollout's row and the deployments' traffic weights in one
transaction with its audit entry (the gate figures that decided it included), so a new
leader finds the rollout exactly where the last one left it. Operators' changes check
the row's ETag; the controller's gate figures are written without bumping it (they are
not a change an operator could conflict with).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from control_plane import schemas as cs
from control_plane.db import models as m
from control_plane.registry._base import RegistryBase, utc
from control_plane.rollouts.plan import RegionSize, default_waves, split_weight
from control_plane.rollouts.schemas import (
    ACTIVE_STATES,
    GateConfig,
    RolloutCreate,
    RolloutPublic,
)
from meridian.errors import Conflict, InvalidInput, NotFound

__all__ = ["CONTROLLER", "RolloutOps", "rollout_public"]

CONTROLLER = "rollout-controller"


def rollout_public(row: m.Rollout) -> RolloutPublic:
    share = row.steps[row.step] if 0 <= row.step < len(row.steps) else 0.0
    return RolloutPublic(
        id=row.id,
        model=row.model,
        from_version=row.from_version,
        to_version=row.to_version,
        variant=row.variant,
        waves=row.waves,
        steps=row.steps,
        bake_s=row.bake_s,
        gates=GateConfig.model_validate(row.gates),
        state=row.state,  # type: ignore[arg-type]
        wave=row.wave,
        step=row.step,
        share=share,
        step_started_at=utc(row.step_started_at) if row.step_started_at else None,
        reason=row.reason,
        figures=(row.figures or {}).get("regions", {}),
        created_by=row.created_by,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        finished_at=utc(row.finished_at) if row.finished_at else None,
        row_version=row.row_version,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RolloutOps(RegistryBase):
    # --- helpers -----------------------------------------------------------------------

    @staticmethod
    def _rollout_row(session: Session, rollout_id: int) -> m.Rollout:
        row = session.get(m.Rollout, rollout_id)
        if row is None:
            raise NotFound(f"rollout {rollout_id} not found")
        return row

    @staticmethod
    def _deployments_of(session: Session, model: str, version: str) -> dict[str, m.Deployment]:
        rows = session.scalars(
            sa.select(m.Deployment)
            .join(m.Deployment.model_version)
            .join(m.ModelVersion.model)
            .where(m.Model.name == model, m.ModelVersion.version == version)
        ).all()
        return {d.region.name: d for d in rows}

    # --- operators ---------------------------------------------------------------------

    def create_rollout(self, data: RolloutCreate, *, actor: str) -> RolloutPublic:
        with self._write() as s:
            self._version_row(s, data.model, data.from_version)
            new_mv = self._version_row(s, data.model, data.to_version)
            if data.variant is not None and all(v.name != data.variant for v in new_mv.variants):
                raise NotFound(f"variant {data.variant!r} of {data.model}:{data.to_version} "
                               "not found")  # fmt: skip
            if data.variant is None and not new_mv.artifact_sha256:
                raise Conflict(f"{data.model}:{data.to_version} has no artifact uploaded yet")
            running = s.scalar(
                sa.select(m.Rollout.id).where(
                    m.Rollout.model == data.model, m.Rollout.state.in_(ACTIVE_STATES)
                )
            )
            if running is not None:
                raise Conflict(f"rollout {running} of model {data.model!r} is still active")
            old = self._deployments_of(s, data.model, data.from_version)
            if not old:
                raise Conflict(f"{data.model}:{data.from_version} is deployed in no region")
            placed = self._deployments_of(s, data.model, data.to_version)
            if placed:
                raise Conflict(
                    f"{data.model}:{data.to_version} is already deployed in "
                    f"{', '.join(sorted(placed))}; a rollout places it itself"
                )
            if data.waves is None:
                sizes = [
                    RegionSize(r, d.region.lat, d.region.lon, float(d.region.gpu_count))
                    for r, d in old.items()
                ]
                waves = default_waves(sizes)
            else:
                waves = [list(w) for w in data.waves]
                listed = {r for w in waves for r in w}
                unknown = sorted(listed - set(old))
                if unknown:
                    raise InvalidInput(f"{data.model}:{data.from_version} is not deployed in "
                                       f"{', '.join(unknown)}")  # fmt: skip
                missing = sorted(set(old) - listed)
                if missing:
                    raise InvalidInput(f"regions deploying {data.model}:{data.from_version} "
                                       f"are in no wave: {', '.join(missing)}")  # fmt: skip
            gates = data.gates.model_dump()
            if gates["compare"] == "auto":
                generative = new_mv.format == m.ModelFormat.GENERATIVE
                gates["compare"] = "none" if generative else "cosine"
            row = m.Rollout(
                model=data.model,
                from_version=data.from_version,
                to_version=data.to_version,
                variant=data.variant,
                waves=waves,
                steps=list(data.steps),
                bake_s=data.bake_s,
                gates=gates,
                state="running",
                wave=0,
                step=-1,
                reason="starting the first wave's workers",
                figures={"weights": {r: d.traffic_weight for r, d in old.items()}, "regions": {}},
                created_by=actor,
            )
            s.add(row)
            s.flush()
            self._audit(s, actor, "create", "rollout", str(row.id),
                        {**data.model_dump(), "waves": waves, "gates": gates})  # fmt: skip
            return rollout_public(row)

    def list_rollouts(
        self, *, model: str | None, state: str | None, limit: int, offset: int
    ) -> cs.Page[RolloutPublic]:
        with self._read() as s:
            query = sa.select(m.Rollout).order_by(m.Rollout.id.desc())
            if model is not None:
                query = query.where(m.Rollout.model == model)
            if state is not None:
                query = query.where(m.Rollout.state == state)
            rows, total = self._page(s, query, limit, offset)
            return cs.Page(
                items=[rollout_public(r) for r in rows], total=total, limit=limit, offset=offset
            )

    def recent_rollouts(
        self, finished_since: dt.datetime, *, limit: int = 50
    ) -> list[RolloutPublic]:
        """The active rollouts and those finished since ``finished_since``, newest first
        (what the console shows live)."""
        with self._read() as s:
            rows = s.scalars(
                sa.select(m.Rollout)
                .where(
                    sa.or_(
                        m.Rollout.state.in_(ACTIVE_STATES),
                        m.Rollout.finished_at >= finished_since,
                    )
                )
                .order_by(m.Rollout.id.desc())
                .limit(limit)
            ).all()
            return [rollout_public(r) for r in rows]

    def get_rollout(self, rollout_id: int) -> RolloutPublic:
        with self._read() as s:
            return rollout_public(self._rollout_row(s, rollout_id))

    def act_on_rollout(
        self, rollout_id: int, action: str, *, expected_version: int | None, actor: str
    ) -> RolloutPublic:
        """An operator's ``pause``, ``resume``, ``promote`` or ``abort``."""
        allowed = {
            "pause": ("running", "promoting"),
            "resume": ("paused",),
            "promote": ("running", "paused"),
            "abort": ACTIVE_STATES,
        }[action]
        with self._write() as s:
            row = self._rollout_row(s, rollout_id)
            self._check_etag(row, expected_version, f"rollout {rollout_id}")
            if row.state not in allowed:
                raise Conflict(f"rollout {rollout_id} is {row.state}; it cannot {action}")
            before = row.state
            if action == "abort":
                self._roll_back(s, row, "aborted", f"aborted by {actor}", actor)
                return rollout_public(row)
            row.state = {"pause": "paused", "resume": "running", "promote": "promoting"}[action]
            row.reason = f"{action}d by {actor}" if action != "pause" else f"paused by {actor}"
            detail = {"from": before, "to": row.state, "wave": row.wave, "step": row.step}
            self._audit(s, actor, action, "rollout", str(row.id), detail)
            return rollout_public(row)

    # --- the controller ----------------------------------------------------------------

    def active_rollouts(self) -> list[RolloutPublic]:
        with self._read() as s:
            rows = s.scalars(
                sa.select(m.Rollout)
                .where(m.Rollout.state.in_(ACTIVE_STATES))
                .order_by(m.Rollout.id)
            ).all()
            return [rollout_public(r) for r in rows]

    def deploy_wave(self, rollout_id: int, wave: int) -> list[str]:
        """Place the new version (weight 0) in the wave's regions that lack it, as the old
        version is placed there; the regions where it was placed now. A controller that
        loses the race to another (two leaders for a moment) places nothing."""
        try:
            return self._deploy_wave(rollout_id, wave)
        except Conflict:  # the same deployment, inserted by the other one meanwhile
            return []

    def _deploy_wave(self, rollout_id: int, wave: int) -> list[str]:
        with self._write() as s:
            row = self._rollout_row(s, rollout_id)
            new_mv = self._version_row(s, row.model, row.to_version)
            old = self._deployments_of(s, row.model, row.from_version)
            new = self._deployments_of(s, row.model, row.to_version)
            placed = []
            for region in row.waves[wave]:
                template = old.get(region)
                if region in new or template is None:
                    continue
                dep = m.Deployment(
                    model_version=new_mv,
                    region=template.region,
                    variant=row.variant,
                    min_replicas=max(1, template.min_replicas),
                    max_replicas=max(1, template.max_replicas),
                    traffic_weight=0.0,
                )
                s.add(dep)
                placed.append(region)
            if placed:
                s.flush()
                detail = {"wave": wave, "regions": placed, "version": row.to_version}
                self._audit(s, CONTROLLER, "deploy", "rollout", str(row.id), detail)
            return placed

    def move_rollout(
        self,
        rollout_id: int,
        wave: int,
        step: int,
        figures: dict[str, Any],
        reason: str,
        *,
        expect: tuple[int, int] | None = None,
    ) -> RolloutPublic:
        """Go to ``(wave, step)``: the wave's regions get the step's share (the earlier waves'
        keep all of it); ``step == -1`` starts the wave's workers first. With ``expect``,
        only from that ``(wave, step)`` of a running or promoting rollout: a controller
        acting on what it read earlier moves nothing that changed meanwhile."""
        with self._write() as s:
            row = self._rollout_row(s, rollout_id)
            if expect is not None and (
                (row.wave, row.step) != expect or row.state not in ("running", "promoting")
            ):
                return rollout_public(row)
            before = {"wave": row.wave, "step": row.step}
            row.wave, row.step, row.reason = wave, step, reason
            row.step_started_at = _now()
            if step >= 0:
                self._weigh(s, row, row.waves[wave], row.steps[step])
            row.figures = {**(row.figures or {}), "regions": figures}
            self._audit(s, CONTROLLER, "step", "rollout", str(row.id),
                        {"from": before, "to": {"wave": wave, "step": step},
                         "share": row.steps[step] if step >= 0 else 0.0,
                         "regions": row.waves[wave], "reason": reason,
                         "figures": figures})  # fmt: skip
            return rollout_public(row)

    def record_figures(self, rollout_id: int, figures: dict[str, Any]) -> None:
        """The latest gate figures, for ``status`` (no new ETag: nothing an operator set)."""
        with self._write() as s:
            row = self._rollout_row(s, rollout_id)
            if row.state not in ACTIVE_STATES:
                return  # finished meanwhile (by another controller): its final figures stay
            merged = {**(row.figures or {}), "regions": figures}
            update = (
                sa.update(m.Rollout)
                .where(m.Rollout.id == rollout_id, m.Rollout.state.in_(ACTIVE_STATES))
                .values(figures=merged)
            )
            s.execute(update.execution_options(synchronize_session=False))

    def finish_rollout(
        self, rollout_id: int, state: str, reason: str, figures: dict[str, Any]
    ) -> RolloutPublic:
        """``completed``: the new version takes every region and the old one's deployments
        go; ``rolled_back``: the old version takes every region back and the new one's go."""
        with self._write() as s:
            row = self._rollout_row(s, rollout_id)
            if row.state not in ACTIVE_STATES:
                return rollout_public(row)
            row.figures = {**(row.figures or {}), "regions": figures}
            if state == "rolled_back":
                self._roll_back(s, row, state, reason, CONTROLLER)
                return rollout_public(row)
            regions = [r for w in row.waves for r in w]
            self._weigh(s, row, regions, 1.0)
            old = self._deployments_of(s, row.model, row.from_version)
            for region in regions:
                if region in old:
                    s.delete(old[region])
            row.state, row.reason, row.finished_at = "completed", reason, _now()
            self._audit(s, CONTROLLER, "complete", "rollout", str(row.id),
                        {"reason": reason, "regions": regions, "figures": figures})  # fmt: skip
            return rollout_public(row)

    def _weigh(self, s: Session, row: m.Rollout, regions: list[str], share: float) -> None:
        weights = (row.figures or {}).get("weights", {})
        old = self._deployments_of(s, row.model, row.from_version)
        new = self._deployments_of(s, row.model, row.to_version)
        for region in regions:
            old_w, new_w = split_weight(float(weights.get(region, 1.0)), share)
            if region in old:
                old[region].traffic_weight = old_w
            if region in new:
                new[region].traffic_weight = new_w

    def _roll_back(self, s: Session, row: m.Rollout, state: str, reason: str, actor: str) -> None:
        weights = (row.figures or {}).get("weights", {})
        old = self._deployments_of(s, row.model, row.from_version)
        new = self._deployments_of(s, row.model, row.to_version)
        for region, dep in old.items():
            dep.traffic_weight = float(weights.get(region, dep.traffic_weight or 1.0))
        for dep in new.values():
            s.delete(dep)
        before = row.state
        row.state, row.reason, row.finished_at = state, reason, _now()
        self._audit(s, actor, "rollback", "rollout", str(row.id),
                    {"from": before, "to": state, "reason": reason, "wave": row.wave,
                     "step": row.step, "removed": sorted(new),
                     "figures": (row.figures or {}).get("regions", {})})  # fmt: skip
