"""API tokens: an expiry, ``last_used_at`` written at most once a minute, rotation."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from control_plane.db.models import ApiToken
from tests.control_plane.conftest import Api, unique


def _token(api: Api, *scopes: str, **extra: object) -> dict[str, object]:
    body = {"name": unique("t"), "scopes": list(scopes), **extra}
    created: dict[str, object] = api.ok("POST", "/v1/tokens", 201, json=body)
    return created


def _set(api: Api, token_id: object, **values: object) -> None:
    with api.registry.db.writes() as s, s.begin():
        s.execute(sa.update(ApiToken).where(ApiToken.id == token_id).values(**values))


def _row(api: Api, token_id: object) -> ApiToken:
    with api.registry.db.reads() as s:
        row = s.get(ApiToken, token_id)
        assert row is not None
        s.expunge(row)
        return row


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return value.replace(tzinfo=dt.UTC) if value and value.tzinfo is None else value


def test_a_token_stops_working_when_it_expires(api: Api) -> None:
    created = _token(api, "read", expires_in_s=3600)
    expires = dt.datetime.fromisoformat(str(created["expires_at"]))
    now = dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=59) < expires - now <= dt.timedelta(hours=1)
    headers = api.headers(str(created["token"]))
    assert api.client.get("/v1/models", headers=headers).status_code == 200

    _set(api, created["id"], expires_at=now - dt.timedelta(seconds=1))
    refused = api.client.get("/v1/models", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthenticated" and "expired" in refused.json()["detail"]

    # no lifetime: never expires; a lifetime under a minute is refused
    assert _token(api, "read")["expires_at"] is None
    short = {"name": unique("t"), "scopes": ["read"], "expires_in_s": 5}
    assert api.client.post("/v1/tokens", json=short, headers=api.admin).status_code == 422


def test_last_used_is_recorded_at_most_once_a_minute(api: Api) -> None:
    created = _token(api, "read")
    headers = api.headers(str(created["token"]))
    assert _row(api, created["id"]).last_used_at is None

    assert api.client.get("/v1/models", headers=headers).status_code == 200
    first = _utc(_row(api, created["id"]).last_used_at)
    assert first is not None
    assert abs(dt.datetime.now(dt.UTC) - first) < dt.timedelta(seconds=30)
    for _ in range(5):  # within the minute: no further write
        assert api.client.get("/v1/models", headers=headers).status_code == 200
    assert _utc(_row(api, created["id"]).last_used_at) == first

    # a minute later (moved back, not waited for) the next request records it again
    _set(api, created["id"], last_used_at=first - dt.timedelta(seconds=61))
    assert api.client.get("/v1/models", headers=headers).status_code == 200
    again = _utc(_row(api, created["id"]).last_used_at)
    assert again is not None and again >= first

    listed = api.ok("GET", "/v1/tokens", params={"limit": 500})["items"]
    mine = next(t for t in listed if t["id"] == created["id"])
    assert mine["last_used_at"] is not None


def test_rotation_replaces_a_token(api: Api) -> None:
    old = _token(api, "read", "agent")
    rotated = api.ok("POST", f"/v1/tokens/{old['id']}/rotate", 201, json={"expires_in_s": 600})
    assert rotated["name"] == old["name"] and rotated["scopes"] == old["scopes"]
    assert rotated["id"] != old["id"] and rotated["token"] != old["token"]
    assert rotated["expires_at"] is not None

    gone = api.client.get("/v1/models", headers=api.headers(str(old["token"])))
    assert gone.status_code == 401 and "revoked" in gone.json()["detail"]
    assert api.client.get("/v1/models", headers=api.headers(rotated["token"])).status_code == 200

    again = api.client.post(f"/v1/tokens/{old['id']}/rotate", headers=api.admin)
    assert again.status_code == 409 and again.json()["error"] == "conflict"
    missing = api.client.post("/v1/tokens/2000000000/rotate", headers=api.admin)
    assert missing.status_code == 404
    # rotating needs admin
    reader = api.headers(str(_token(api, "read")["token"]))
    assert api.client.post(f"/v1/tokens/{rotated['id']}/rotate", headers=reader).status_code == 403


def test_replicas_starting_together_add_a_configured_token_once(api: Api) -> None:
    """Two replicas given the same bootstrap token at the same moment: one adds it, the
    other finds it, neither fails."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    for _ in range(10):
        token = f"mtk_{unique('boot')}"
        start = threading.Barrier(2)

        def ensure(token: str = token, start: threading.Barrier = start) -> bool:
            start.wait()
            return api.registry.ensure_token(
                token, name=unique("boot"), scopes=["admin"], actor="bootstrap"
            )

        with ThreadPoolExecutor(2) as pool:
            added = [f.result() for f in [pool.submit(ensure), pool.submit(ensure)]]
        assert sorted(added) == [False, True]
