"""The admin API's OpenAPI document matches what the API does.

schemathesis (every check, the examples, coverage, fuzzing and stateful phases) runs
against a real control plane on PostgreSQL served by uvicorn on 127.0.0.1: as an
admin (0 failures), with a ``read`` token (every write answers 403) and without a
token (every route but ``/healthz`` answers 401).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from pydantic import SecretStr
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events

from control_plane.app import create_app
from control_plane.db.models import ApiToken
from control_plane.registry import Registry
from control_plane.registry._base import secret_hash
from control_plane.settings import ControlPlaneSettings
from meridian.net import free_port
from meridian.waiting import wait_until
from tests import services

BOOTSTRAP = "contract-bootstrap-admin-token-0123456789"
# the admin token the runs use: schemathesis revokes and rotates the tokens whose ids it
# draws (1, 2, the largest...); this id it will not draw
RUN_TOKEN_ID = 1_987_654_321
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# a schema-valid request may still meet the registry's state: an ETag that is not the
# current one (412), or a rule across fields such as pinning without a count (400)
STATE_REFUSALS = ["400", "412", "413"]


@dataclass
class LiveApi:
    url: str
    admin: str  # the bootstrap token: for setting up
    runner: str  # an admin token schemathesis will not revoke

    def token(self, *scopes: str) -> str:
        answer = httpx.post(
            f"{self.url}/v1/tokens",
            json={"name": f"contract-{'-'.join(scopes)}-{time.monotonic_ns()}", "scopes": scopes},
            headers={"Authorization": f"Bearer {self.admin}"},
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["token"])


@pytest.fixture
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    data_dir: Path = tmp_path_factory.mktemp("contract")
    with services.fresh_postgres_database() as url:
        settings = ControlPlaneSettings(
            data_dir=data_dir,
            database_url=url,
            bootstrap_admin_token=SecretStr(BOOTSTRAP),
            max_artifact_bytes=1024 * 1024,
            redis_url=services.REDIS_URL,
            grpc_port=0,
        )
        port = free_port()
        app = create_app(settings)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                lifespan="on",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=5,
            )
        )
        thread = threading.Thread(target=server.run, name="contract-api", daemon=True)
        thread.start()
        try:
            wait_until(
                lambda: server.started or not thread.is_alive(), timeout=30, what="API started"
            )
            assert server.started, "the control plane did not start"
            yield LiveApi(f"http://127.0.0.1:{port}", BOOTSTRAP, _runner_token(app.state.registry))
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            # stopped (the fleet plane too) before its database is dropped
            assert not thread.is_alive(), "the control plane did not stop"


def _runner_token(registry: Registry) -> str:
    token = "contract-run-admin-token-0123456789"
    with registry.db.writes() as s, s.begin():
        s.add(
            ApiToken(
                id=RUN_TOKEN_ID, name="contract-run", token_hash=secret_hash(token), scopes="admin"
            )
        )
    return token


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)
    # (method, path template, status, error code, with a token) of every answer
    answers: list[tuple[str, str, int, str, bool]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # phase name -> its status, for the phases that ran
    phases: dict[str, str] = field(default_factory=dict)


def run_schemathesis(
    api: LiveApi, token: str | None, *, max_examples: int, every_phase: bool = False
) -> Outcome:
    """Every check; ``every_phase``: the coverage (every case the schema defines) and
    stateful phases too, else examples and fuzzing only."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    config = SchemathesisConfig.from_dict(
        {
            "seed": 20261204,
            "base-url": api.url,
            "headers": headers,
            "workers": 1,
            "generation": {"max-examples": max_examples, "database": "none"},
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": [
                        "2xx",
                        "401",
                        "403",
                        "404",
                        "409",
                        *STATE_REFUSALS,
                    ]
                },
                # a missing If-Match is answered 428 Precondition Required
                "missing_required_header": {
                    "expected-statuses": ["400", "401", "403", "406", "415", "422", "428"]
                },
            },
            "phases": {
                "coverage": {"enabled": every_phase},
                "stateful": {"enabled": every_phase, "max-steps": 10},
            },
        }
    )
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json", config=config)
    schema.hook("filter_failure")(_artifact_not_uploaded_yet)
    outcome = Outcome()
    started: dict[str, float] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        recorder = getattr(event, "recorder", None)
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished) and recorder:
            _collect(recorder, outcome)
        elif isinstance(event, events.NonFatalError | events.FatalError):
            outcome.errors.append(repr(getattr(event, "value", None) or event))
        elif isinstance(event, events.PhaseStarted):
            started[event.phase.name.value] = time.monotonic()
        elif isinstance(event, events.PhaseFinished):
            name = event.phase.name.value
            outcome.phases[name] = event.status.value
            took = time.monotonic() - started.get(name, time.monotonic())
            print(f"schemathesis {name}: {event.status.value} in {took:.1f}s")
        elif isinstance(event, events.EngineFinished):
            outcome.failures.extend(f"run: {f.title}: {f.message}" for f in event.failures)
    return outcome


def _artifact_not_uploaded_yet(_context: Any, failure: Any, case: Any, response: Any) -> bool:
    """``filter_failure``: keep every failure but one. ensure_resource_availability takes
    any path below a created resource for part of it, so after ``POST .../versions`` it
    expects ``.../versions/{version}/artifact`` to exist; that answers 404 (documented)
    until the artifact is uploaded, which is what the API means. Only that answer is let
    through, and only when its body (a HEAD has none) says so."""
    if type(failure).__name__ != "EnsureResourceAvailability":
        return True
    if not (case.operation.path.endswith("/artifact") and response.status_code == 404):
        return True
    if case.method.upper() == "HEAD":  # no body to read the reason from
        return False
    return "has no artifact uploaded yet" not in str(response.json().get("detail", ""))


def _collect(recorder: Any, outcome: Outcome) -> None:
    for case_id, node in recorder.cases.items():
        case = node.value
        interaction = recorder.interactions.get(case_id)
        if interaction is not None and interaction.response is not None:
            response = interaction.response
            code = ""
            if response.status_code >= 400 and response.content:
                try:
                    code = str(response.json().get("error", ""))
                except ValueError:
                    code = "?"
            outcome.answers.append(
                (
                    case.method.upper(),
                    case.operation.path,
                    response.status_code,
                    code,
                    "Authorization" in interaction.request.headers,
                )
            )
    for checks in recorder.checks.values():
        for check in checks:
            if check.failure_info is not None:
                failure = check.failure_info.failure
                outcome.failures.append(
                    f"{check.name}: {failure.operation}: {failure.title}: {failure.message}"
                )


def _report(outcome: Outcome) -> str:
    unique = sorted(set(outcome.failures))
    return f"{len(unique)} unique failures:\n" + "\n".join(u[:1200] for u in unique[:40])


def test_admin_conforms_to_its_document(live_api: LiveApi) -> None:
    outcome = run_schemathesis(live_api, live_api.runner, max_examples=5, every_phase=True)
    assert not outcome.errors, outcome.errors
    assert not outcome.failures, _report(outcome)
    assert outcome.phases.get("stateful") == "success", outcome.phases
    statuses = {a[2] for a in outcome.answers}
    assert len(outcome.answers) > 300, len(outcome.answers)
    # it got past validation and authentication, and hit every kind of refusal
    assert {200, 201, 204, 404, 422, 428}.issubset(statuses), sorted(statuses)


def test_read_token_gets_403_on_every_write(live_api: LiveApi) -> None:
    outcome = run_schemathesis(live_api, live_api.token("read"), max_examples=3)
    assert not outcome.errors, outcome.errors
    assert not outcome.failures, _report(outcome)
    # the writes sent with the token, to the methods the document lists; demand hints,
    # traffic reports and figures are the writes a read token may make (routers send them)
    writes = [
        a
        for a in outcome.answers
        if a[0] in WRITES
        and a[4]
        and a[3] != "method_not_allowed"
        and not a[1].startswith(("/v1/demand/", "/v1/traffic", "/v1/figures"))
    ]
    assert writes
    # 403 on every write; only a body that is not even JSON is refused (400) before that
    other = [a for a in writes if a[2] != 403 and a[3] != "unparseable_body"]
    assert not other, other[:10]
    assert {(a[0], a[1]) for a in writes if a[2] == 403} == {(a[0], a[1]) for a in writes}


def test_no_token_gets_401_everywhere_but_health(live_api: LiveApi) -> None:
    outcome = run_schemathesis(live_api, None, max_examples=2)
    assert not outcome.errors, outcome.errors
    assert not outcome.failures, _report(outcome)
    other = [
        a
        for a in outcome.answers
        if a[1] != "/healthz"
        and a[2] != 401
        and a[3] not in ("unparseable_body", "method_not_allowed")
    ]
    assert not other, other[:10]
    assert {a[2] for a in outcome.answers if a[1] != "/healthz"} >= {401}
    assert any(a[1] == "/healthz" and a[2] == 200 for a in outcome.answers)


def test_a_new_region_has_health_at_once(live_api: LiveApi) -> None:
    admin = {"Authorization": f"Bearer {live_api.admin}"}
    with httpx.Client(base_url=live_api.url, headers=admin) as client:
        for i in range(5):
            name = f"fresh-{i}-{time.monotonic_ns()}"
            created = client.post("/v1/regions", json={"name": name, "lat": 1.0, "lon": 2.0})
            assert created.status_code == 201, created.text
            health = client.get(f"/v1/regions/{name}/health")
            assert health.status_code == 200, health.text
            assert health.json()["region"] == name
            assert health.json()["routable"] is False
        missing = client.get("/v1/regions/never-created/health")
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"
