"""``/v1/rollouts`` over a real registry, and the controller driven tick by tick with
figures and snapshots passed in (no sockets: the controller's inputs are plain data)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from control_plane.rollouts.controller import RolloutController
from control_plane.rollouts.window import RouterReport
from meridian.figures import VersionFigures
from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from tests.control_plane.conftest import Api

GATES = {"min_requests": 20, "min_mirrored": 10, "mirror_share": 0.5}


def placed(api: Api, regions: list[dict[str, Any]]) -> str:
    model, _ = api.deployable()
    api.version(model, "2")
    api.upload(f"/v1/models/{model}/versions/2/artifact", b"onnx-bytes-2:" + model.encode())
    for region in regions:
        body = {"model": model, "version": "1", "region": region["name"]}
        api.ok("POST", "/v1/deployments", 201, json=body)
    return model


def deployments(api: Api, model: str) -> dict[tuple[str, str], float]:
    page = api.ok("GET", "/v1/deployments", params={"model": model})
    return {(d["version"], d["region"]): d["traffic_weight"] for d in page["items"]}


def test_create_plans_waves_and_refuses_what_cannot_roll(api: Api) -> None:
    big = api.region(gpu_count=8, lat=39.0, lon=-77.5)
    small = api.region(gpu_count=1, lat=50.1, lon=8.7)
    model = placed(api, [big, small])
    body = {"model": model, "from_version": "1", "to_version": "2", "gates": GATES}
    for bad, status, words in [
        ({"steps": [0.1, 0.5]}, 400, "last step must be 1"),
        ({"steps": [0.5, 0.1, 1.0]}, 400, "must increase"),
        ({"to_version": "1"}, 400, "must differ"),
        ({"to_version": "9"}, 404, "not found"),
        ({"waves": [[big["name"]]]}, 400, "in no wave"),
        ({"gates": {"min_requests": 10}}, 422, "min_requests"),
    ]:
        r = api.client.post("/v1/rollouts", json={**body, **bad}, headers=api.admin)
        assert r.status_code == status, (bad, r.text)
        assert words in r.text, (bad, r.text)
    r = api.client.post("/v1/rollouts", json=body, headers=api.admin)
    assert r.status_code == 201, r.text
    created = r.json()
    assert r.headers["etag"] == f'"{created["row_version"]}"'
    assert created["waves"] == [[small["name"]], [big["name"]]]  # smallest first
    assert created["state"] == "running" and created["step"] == -1
    assert created["gates"]["compare"] == "cosine"  # auto: an embedding model
    again = api.client.post("/v1/rollouts", json=body, headers=api.admin)
    assert again.status_code == 409 and "still active" in again.text
    listed = api.ok("GET", "/v1/rollouts", params={"model": model, "state": "running"})
    assert [x["id"] for x in listed["items"]] == [created["id"]]


def test_operator_actions_need_the_etag_and_abort_restores_the_old_version(api: Api) -> None:
    region = api.region()
    model = placed(api, [region])
    body = {"model": model, "from_version": "1", "to_version": "2", "gates": GATES}
    created = api.ok("POST", "/v1/rollouts", 201, json=body)
    rid = created["id"]
    assert api.client.post(f"/v1/rollouts/{rid}/pause", headers=api.admin).status_code == 428
    stale = api.headers(**{"If-Match": '"999"'})
    assert api.client.post(f"/v1/rollouts/{rid}/pause", headers=stale).status_code == 412
    etag = api.client.get(f"/v1/rollouts/{rid}", headers=api.admin).headers["etag"]
    paused = api.ok("POST", f"/v1/rollouts/{rid}/pause", headers=api.headers(**{"If-Match": etag}))
    assert paused["state"] == "paused"
    bad = api.client.post(f"/v1/rollouts/{rid}/pause", headers=api.headers(**{"If-Match": "*"}))
    assert bad.status_code == 409
    api.registry.deploy_wave(rid, 0)  # as the controller would: the new version placed
    assert deployments(api, model) == {("1", region["name"]): 1.0, ("2", region["name"]): 0.0}
    aborted = api.ok("POST", f"/v1/rollouts/{rid}/abort", headers=api.headers(**{"If-Match": "*"}))
    assert aborted["state"] == "aborted" and aborted["finished_at"]
    assert deployments(api, model) == {("1", region["name"]): 1.0}
    actions = [e["action"] for e in api.ok("GET", "/v1/audit", params={
        "entity": "rollout", "entity_key": str(rid)})["items"]]  # fmt: skip
    assert {"create", "pause", "deploy", "rollback"} <= set(actions)
    assert api.client.get("/v1/rollouts/2147483647", headers=api.admin).status_code == 404


def snapshot(regions: list[str], model: str, versions: list[str]) -> RoutingSnapshot:
    workers = tuple(
        WorkerView(f"w-{v}", "http://127.0.0.1:1", HealthState.HEALTHY, (f"{model}:{v}",))
        for v in versions
    )
    views = tuple(RegionView(r, HealthState.HEALTHY, 0.0, 0.0, workers=workers) for r in regions)
    return RoutingSnapshot(1, 0.0, views)


class Figures:
    """What routers would report: counts that grow as the test says."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], VersionFigures] = {}

    def serve(self, key: tuple[str, str, str], n: int, ms: float = 10.0, errors: int = 0,
              mirrored: int = 0, drift: float = 0.0) -> None:  # fmt: skip
        f = self.counts.setdefault(key, VersionFigures())
        for i in range(n):
            f.failed() if i < errors else f.answered(ms)
        for _ in range(mirrored):
            f.compared(drift)

    async def reports(self) -> list[RouterReport]:
        copied = {k: VersionFigures.from_dict(v.to_dict()) for k, v in self.counts.items()}
        return [RouterReport("router-1", "boot-1", copied)]


def drive(api: Api, model: str, regions: list[str], *, bad: bool) -> tuple[list[Any], Any]:
    figures = Figures()
    snap = [snapshot(regions, model, ["1"])]
    mirrors: list[dict[Any, Any]] = []
    controller = RolloutController(api.registry, reports=figures.reports,
                                   snapshot=lambda: snap[0], on_change=lambda: None,
                                   set_mirrors=mirrors.append)  # fmt: skip
    body = {"model": model, "from_version": "1", "to_version": "2", "steps": [0.5, 1.0],
            "bake_s": 0.5, "gates": GATES, "waves": [[r] for r in regions]}  # fmt: skip
    rid = api.ok("POST", "/v1/rollouts", 201, json=body)["id"]
    positions = []

    async def run() -> None:
        for _ in range(200):
            r = api.registry.get_rollout(rid)
            positions.append((r.state, r.wave, r.step))
            if r.state != "running":
                return
            snap[0] = snapshot(regions, model, ["1", "2"])  # the new workers came up
            for region in regions:
                figures.serve((model, "1", region), 20)
                drift = 0.8 if bad else 0.0
                figures.serve((model, "2", region), 20, mirrored=10, drift=drift)
            await controller.tick()
            await asyncio.sleep(0.06)

    asyncio.run(run())
    return positions, api.registry.get_rollout(rid)


def test_the_controller_moves_wave_by_wave_and_completes(api: Api) -> None:
    regions = [api.region()["name"], api.region()["name"]]
    model = placed(api, [{"name": r} for r in regions])
    positions, final = drive(api, model, regions, bad=False)
    assert final.state == "completed", final.reason
    moves = [p for i, p in enumerate(positions) if i == 0 or p != positions[i - 1]]
    assert moves == [("running", 0, -1), ("running", 0, 0), ("running", 0, 1),
                     ("running", 1, -1), ("running", 1, 0), ("running", 1, 1),
                     ("completed", 1, 1)]  # fmt: skip
    assert deployments(api, model) == {("2", r): 1.0 for r in regions}


def test_the_controller_rolls_back_on_output_drift(api: Api) -> None:
    regions = [api.region()["name"], api.region()["name"]]
    model = placed(api, [{"name": r} for r in regions])
    _, final = drive(api, model, regions, bad=True)
    assert final.state == "rolled_back" and final.wave == 0
    assert "output drift" in final.reason
    assert final.figures[regions[0]]["verdict"] == "fail"
    assert deployments(api, model) == {("1", r): 1.0 for r in regions}


def test_figures_recorded_after_the_end_do_not_replace_the_final_ones(api: Api) -> None:
    # two controllers for a moment (a leader change): the old one's late "wait" must not
    # overwrite the verdict the rollout ended on
    region = api.region()["name"]
    model = placed(api, [{"name": region}])
    body = {"model": model, "from_version": "1", "to_version": "2", "gates": GATES}
    rid = api.ok("POST", "/v1/rollouts", 201, json=body)["id"]
    api.registry.record_figures(rid, {region: {"verdict": "wait"}})
    assert api.registry.get_rollout(rid).figures[region]["verdict"] == "wait"
    api.registry.finish_rollout(rid, "rolled_back", "gate failed", {region: {"verdict": "fail"}})
    api.registry.record_figures(rid, {region: {"verdict": "wait"}})
    final = api.registry.get_rollout(rid)
    assert final.state == "rolled_back" and final.figures[region]["verdict"] == "fail"


def test_a_second_controller_acting_on_what_it_read_earlier_changes_nothing(api: Api) -> None:
    region = api.region()["name"]
    model = placed(api, [{"name": region}])
    body = {"model": model, "from_version": "1", "to_version": "2", "gates": GATES}
    rid = api.ok("POST", "/v1/rollouts", 201, json=body)["id"]
    assert api.registry.deploy_wave(rid, 0) == [region]
    assert api.registry.deploy_wave(rid, 0) == []  # already placed: nothing twice
    moved = api.registry.move_rollout(rid, 0, 0, {}, "first", expect=(0, -1))
    assert (moved.wave, moved.step) == (0, 0)
    stale = api.registry.move_rollout(rid, 0, 0, {}, "again", expect=(0, -1))
    assert (stale.wave, stale.step, stale.reason) == (0, 0, "first")
    assert deployments(api, model)[("2", region)] == pytest.approx(moved.steps[0])


def test_the_cli_creates_follows_and_acts_with_the_etag(api: Api) -> None:
    from control_plane.rollouts_cli import render, run
    from meridian.cli import build_parser

    region = api.region()
    model = placed(api, [region])
    parser = build_parser()
    client = api.client
    saved = dict(client.headers)
    client.headers.update(api.admin)
    try:
        args = parser.parse_args(["rollout", "create", model, "1", "2", "--steps", "0.1,1",
                                  "--bake-s", "5", "--gates", '{"min_requests": 50}'])  # fmt: skip
        (created,) = run(args, client)
        assert created["steps"] == [0.1, 1.0] and created["gates"]["min_requests"] == 50
        rid = str(created["id"])
        for action, state in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
            (done,) = run(parser.parse_args(["rollout", action, rid]), client)
            assert done["state"] == state
        (shown,) = run(parser.parse_args(["rollout", "status", rid]), client)
        text = render(shown)
        assert f"rollout {rid}: {model} 1 → 2  aborted" in text and "aborted by" in text
        listed = run(parser.parse_args(["rollout", "status", "--model", model]), client)
        assert [r["id"] for r in listed] == [created["id"]]
    finally:
        client.headers.clear()
        client.headers.update(saved)
