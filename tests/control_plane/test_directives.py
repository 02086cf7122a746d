"""Directives from the registry: content-addressed generations, stored only on change."""

from __future__ import annotations

import asyncio

import pytest

from control_plane.health.directives import DirectiveBoard, DirectiveReconciler, directives_for
from control_plane.health.inventory import DeploymentRecord, RegionRecord, RegistryView
from meridian.coordination import InProcessCoordination
from meridian.waiting import wait_until_async

EU = RegionRecord("eu", 0, 0)
DEP = DeploymentRecord("resnet", "1", "eu", min_replicas=0, max_replicas=3, artifact_url="u")


def test_generation_follows_content() -> None:
    view = RegistryView((EU,), (DEP,))
    a = directives_for(view, "eu", report_interval_s=1.0)
    b = directives_for(view, "eu", report_interval_s=1.0)
    assert a.generation == b.generation != 0
    assert [(w.model, w.replicas, w.artifact_url) for w in a.workers] == [("resnet", 1, "u")]
    c = directives_for(view, "eu", report_interval_s=0.5)
    assert c.generation != a.generation
    disabled = RegistryView((RegionRecord("eu", 0, 0, status="disabled"),), (DEP,))
    assert list(directives_for(disabled, "eu", report_interval_s=1.0).workers) == []


def test_a_degrade_to_variant_runs_one_reserve_worker() -> None:
    dep = DeploymentRecord("resnet", "1", "eu", min_replicas=2, max_replicas=3, artifact_url="u",
                           degrade_to="int8", degrade_url="v", degrade_sha256="cd")  # fmt: skip
    workers = directives_for(RegistryView((EU,), (dep,)), "eu", report_interval_s=1.0).workers
    assert [(w.variant, w.replicas, w.artifact_url, w.reserve) for w in workers] == [
        ("", 2, "u", False),
        ("int8", 1, "v", True),
    ]


async def test_reconciler_writes_changes_only_and_board_delivers_them() -> None:
    coord = InProcessCoordination()
    board = DirectiveBoard(coord, report_interval_s=1.0)
    follow = asyncio.create_task(board.run())
    try:
        queue = board.subscribe("eu")
        assert board.current("eu").generation == 0  # nothing decided yet
        reconciler = DirectiveReconciler(coord, report_interval_s=1.0)
        await reconciler.reconcile(RegistryView((EU,), (DEP,)))
        await reconciler.reconcile(RegistryView((EU,), (DEP,)))
        assert reconciler.writes == 1
        first = await asyncio.wait_for(queue.get(), 2)
        assert [w.model for w in first.workers] == ["resnet"]
        await reconciler.reconcile(RegistryView((EU,), ()))
        second = await asyncio.wait_for(queue.get(), 2)
        assert list(second.workers) == [] and second.generation != first.generation
        await reconciler.reconcile(RegistryView((), ()))
        assert reconciler.writes == 3
        items, _ = await coord.get_prefix("/meridian/fleet/directives/")
        assert items == []
        board.unsubscribe("eu", queue)
        await wait_until_async(lambda: board.current("eu").generation != 0, timeout=1)
    finally:
        follow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follow
        await coord.close()
