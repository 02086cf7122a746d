"""Rollouts in the console's state: read from the registry at most once per interval, and
carried by the event stream while active and for a while after they finish."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import orjson

from control_plane.console.rollouts import RolloutBoard, rollout_view
from control_plane.rollouts.schemas import GateConfig, RolloutPublic
from tests.console_support import (
    READ_TOKEN,
    SITES,
    admin_call,
    console_fleet_factory,
    create_rollout,
)
from tests.control_plane.conftest import Api
from tests.control_plane.test_rollouts_api import placed

__all__ = ["console_fleet_factory"]  # a fixture

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def public(state: str = "running", **extra: Any) -> RolloutPublic:
    fields: dict[str, Any] = {
        "id": 7, "model": "m", "from_version": "1", "to_version": "2", "variant": None,
        "waves": [["eu"], ["us"]], "steps": [0.1, 1.0], "bake_s": 60.0, "gates": GateConfig(),
        "state": state, "wave": 0, "step": 0, "share": 0.1, "step_started_at": NOW,
        "reason": "wave 1: 10% of traffic",
        "figures": {"eu": {"verdict": "wait", "reasons": ["3 of 200 requests"]}},
        "created_by": "ops", "created_at": NOW, "updated_at": NOW, "finished_at": None,
        "row_version": 3, **extra,
    }  # fmt: skip
    return RolloutPublic(**fields)


def test_a_rollouts_view_says_where_it_is_and_why_without_its_gate_settings() -> None:
    view = rollout_view(public())
    assert view["state"] == "running" and (view["wave"], view["step"], view["share"]) == (0, 0, 0.1)
    assert view["figures"]["eu"]["verdict"] == "wait"
    assert view["reason"] == "wave 1: 10% of traffic" and view["row_version"] == 3
    assert view["created_at"] == "2026-01-02T03:04:05+00:00" and view["finished_at"] is None
    assert "gates" not in view
    orjson.dumps(view)  # JSON as it is


async def test_the_board_reads_at_most_once_per_interval_and_keeps_its_view_on_errors() -> None:
    asked: list[dt.datetime] = []
    answers: list[list[RolloutPublic] | Exception] = [[public()], RuntimeError("db away")]

    def read(since: dt.datetime) -> list[RolloutPublic]:
        asked.append(since)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    board = RolloutBoard(read, refresh_s=3600.0, recent_s=600.0)
    first = await board.refresh()
    assert [r["id"] for r in first] == [7]
    assert await board.refresh() is first and len(asked) == 1  # within the interval
    lag = dt.datetime.now(dt.UTC) - asked[0]
    assert dt.timedelta(seconds=599) < lag < dt.timedelta(seconds=660)
    board.refresh_s = 0.0
    assert await board.refresh() == first and len(asked) == 2  # the read failed: kept


def test_the_registry_gives_active_rollouts_and_those_finished_since(api: Api) -> None:
    model = placed(api, [api.region()])
    other = placed(api, [api.region()])
    body = {"from_version": "1", "to_version": "2", "gates": {"min_requests": 20}}
    finished = api.ok("POST", "/v1/rollouts", 201, json={**body, "model": model})
    api.ok("POST", f"/v1/rollouts/{finished['id']}/abort", headers=api.headers(**{"If-Match": "*"}))
    active = api.ok("POST", "/v1/rollouts", 201, json={**body, "model": other})
    try:
        now = dt.datetime.now(dt.UTC)
        hour = dt.timedelta(hours=1)
        mine = {active["id"], finished["id"]}  # the registry is shared with other tests
        ids = [r.id for r in api.registry.recent_rollouts(now - hour) if r.id in mine]
        assert ids == [active["id"], finished["id"]]  # newest first
        later = [r.id for r in api.registry.recent_rollouts(now + hour) if r.id in mine]
        assert later == [active["id"]]
    finally:
        # left running, the leader's controller would place its waves (new deployments)
        # under the other tests that share this control plane
        api.ok("POST", f"/v1/rollouts/{active['id']}/abort",
               headers=api.headers(**{"If-Match": "*"}))  # fmt: skip


def _state(events: httpx.Response, accept: Any) -> dict[str, Any]:
    event = ""
    for line in events.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "state":
            state: dict[str, Any] = orjson.loads(line[6:])
            if accept(state):
                return state
    raise AssertionError("the stream ended without the state wanted")


def test_the_stream_carries_a_rollout_while_active_and_after_it_is_aborted(
    console_fleet_factory: Any,
) -> None:
    fleet = console_fleet_factory({k: SITES[k] for k in ("us-east", "eu-west")})
    created = create_rollout(fleet, [["eu-west"], ["us-east"]])
    rid = created["id"]
    with httpx.Client(base_url=fleet.url, timeout=10) as client:
        signed = client.post("/ui/session", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert signed.is_success, signed.text
        with client.stream("GET", "/ui/events") as events:
            state = _state(events, lambda s: bool(s["rollouts"]))
        [shown] = state["rollouts"]
        assert shown["id"] == rid and shown["state"] == "running"
        assert shown["waves"] == [["eu-west"], ["us-east"]] and shown["steps"] == [0.1, 1.0]
        etag = admin_call(fleet, "GET", f"/v1/rollouts/{rid}").headers["etag"]
        done = admin_call(fleet, "POST", f"/v1/rollouts/{rid}/abort", headers={"If-Match": etag})
        assert done.status_code == 200, done.text
        with client.stream("GET", "/ui/events") as events:
            state = _state(events, lambda s: s["rollouts"][0]["state"] != "running")
        [shown] = state["rollouts"]
        assert shown["state"] == "aborted" and shown["reason"] == "aborted by console-admin"
        assert shown["finished_at"] is not None
