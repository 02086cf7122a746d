"""The REST admin API: thin routes over the ``Registry``, all under ``/v1``."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from . import (
    api_keys,
    artifacts,
    audit,
    demand,
    deployments,
    models,
    regions,
    rollouts,
    tokens,
    variants,
    versions,
)
from .deps import current_principal
from .errors import COMMON, error_responses

__all__ = ["api_router"]


def api_router() -> APIRouter:
    """Every ``/v1`` route; each one needs a valid bearer token before anything else."""
    router = APIRouter(
        prefix="/v1",
        dependencies=[Depends(current_principal)],
        responses=error_responses(*COMMON),
    )
    for module in (models, versions, variants, artifacts, regions, deployments, demand, tokens,
                   api_keys, audit, rollouts):  # fmt: skip
        router.include_router(module.router)
    router.include_router(rollouts.figures_router)
    return router
