"""``/v1/rollouts``: a new model version moved through regions in gated canary steps.

Operators create a rollout and may pause, resume, promote or abort it (each with the
rollout's ETag); the leader's controller (``control_plane.rollouts.controller``) does
the rest. Routers post their per version and region figures to
``/v1/figures`` (with a read token); any replica passes them to the leader.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response

from control_plane.rollouts.schemas import (
    FiguresAccepted,
    FiguresReport,
    RolloutCreate,
    RolloutPublic,
    RolloutState,
)
from control_plane.schemas import Page
from meridian.errors import Unavailable

from .deps import Admin, IfMatch, Paging, Reader, RegistryDep, RowId, set_etag
from .errors import ETAG_WRITE, WRITE, error_responses

router = APIRouter(prefix="/rollouts", tags=["rollouts"])
figures_router = APIRouter(prefix="/figures", tags=["rollouts"])

Action = Literal["pause", "resume", "promote", "abort"]


@router.post("", status_code=201, responses=error_responses(*WRITE))
def create_rollout(
    body: RolloutCreate, registry: RegistryDep, caller: Admin, response: Response
) -> RolloutPublic:
    created = registry.create_rollout(body, actor=caller.name)
    set_etag(response, created.row_version)
    response.headers["Location"] = f"/v1/rollouts/{created.id}"
    return created


@router.get("")
def list_rollouts(
    registry: RegistryDep,
    _: Reader,
    page: Paging,
    model: Annotated[str | None, Query(max_length=128)] = None,
    state: RolloutState | None = None,
) -> Page[RolloutPublic]:
    return registry.list_rollouts(model=model, state=state, limit=page.limit, offset=page.offset)


@figures_router.post("", status_code=202, responses=error_responses())
async def post_figures(body: FiguresReport, request: Request, _: Reader) -> FiguresAccepted:
    """A router's cumulative figures per model version and region (rollout gates)."""
    fleet = getattr(request.app.state, "fleet", None)
    if fleet is None:
        raise Unavailable("this control plane runs no fleet plane to take figures", retry_after=5)
    stored = {**body.model_dump(), "at": time.time()}  # wall clock: read on another host
    await fleet.note_figures(body.router, orjson.dumps(stored))
    return FiguresAccepted(rows=len(body.figures))


@router.get("/{rollout_id}", responses=error_responses(404))
def get_rollout(
    rollout_id: RowId, registry: RegistryDep, _: Reader, response: Response
) -> RolloutPublic:
    found = registry.get_rollout(rollout_id)
    set_etag(response, found.row_version)
    return found


@router.post("/{rollout_id}/{action}", responses=error_responses(*ETAG_WRITE))
def act_on_rollout(
    rollout_id: RowId,
    action: Action,
    caller: Admin,
    expected: IfMatch,
    registry: RegistryDep,
    response: Response,
) -> RolloutPublic:
    """``pause`` (the weights stay), ``resume``, ``promote`` (every remaining step at once,
    gates not waited for) or ``abort`` (back to the old version everywhere)."""
    done = registry.act_on_rollout(rollout_id, action, expected_version=expected, actor=caller.name)
    set_etag(response, done.row_version)
    return done
