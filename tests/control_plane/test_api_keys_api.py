"""``/v1/api-keys``: end users' keys issued through the admin API (both backends), and how
they reach the routers through the keyring (``/v1/routing/api-keys``)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from control_plane.db.models import ApiKey, AuditEntry
from meridian.waiting import wait_until
from tests import services
from tests.control_plane.conftest import Api, sha256, unique


def _body() -> dict[str, Any]:
    return {"name": unique("k"), "rate_per_s": 5, "burst": 10}


def _issue(api: Api, **extra: Any) -> dict[str, Any]:
    body = {**_body(), **extra}
    result: dict[str, Any] = api.ok("POST", "/v1/api-keys", 201, json=body)
    return result


def _keyring(api: Api) -> dict[str, dict[str, Any]]:
    ring = api.client.get("/v1/routing/api-keys", headers=api.admin)
    return {k["name"]: k for k in ring.json()["keys"]} if ring.status_code == 200 else {}


def test_a_key_is_shown_once_and_only_its_hash_is_kept(api: Api) -> None:
    created = _issue(api, models=["bert", "mlp", "bert"])
    key = created["key"]
    assert key.startswith("mrk_") and len(key) > 40
    assert created["prefix"] == key[:12]
    assert created["models"] == ["bert", "mlp"]  # sorted, once each
    assert (created["rate_per_s"], created["burst"]) == (5, 10)

    fetched = api.ok("GET", f"/v1/api-keys/{created['name']}")
    assert "key" not in fetched
    listed = api.ok("GET", "/v1/api-keys", params={"limit": 500})
    assert created["name"] in {k["name"] for k in listed["items"]}
    assert all("key" not in k for k in listed["items"])

    with api.registry.db.reads() as s:
        row = s.scalar(sa.select(ApiKey).where(ApiKey.name == created["name"]))
        assert row is not None
        assert row.key_hash == sha256(key.encode())
        assert key not in repr([getattr(row, c.key) for c in ApiKey.__table__.columns])
        audit = s.scalars(
            sa.select(AuditEntry).where(
                AuditEntry.entity == "api_key", AuditEntry.entity_key == created["name"]
            )
        ).all()
        assert [a.action for a in audit] == ["create"]
        assert key not in repr(audit[0].detail)


def test_bad_input_is_a_clear_4xx(api: Api) -> None:
    name = unique("k")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": name, "rate_per_s": 0, "burst": 10}, "rate_per_s"),
        ({"name": name, "rate_per_s": 5, "burst": 0.5}, "burst"),
        ({"name": name, "rate_per_s": "fast", "burst": 10}, "rate_per_s"),
        ({"name": "no spaces", "rate_per_s": 5, "burst": 10}, "name"),
        ({"name": name, "rate_per_s": 5, "burst": 10, "models": ["../x"]}, "models"),
        ({"name": name, "rate_per_s": 5, "burst": 10, "quota": 1}, "quota"),
        ({"name": name, "burst": 10}, "rate_per_s"),
    ]
    for body, field in cases:
        r = api.client.post("/v1/api-keys", json=body, headers=api.admin)
        assert r.status_code == 422, (body, r.text)
        assert field in r.text, (body, r.text)
    taken = _issue(api)["name"]
    again = api.client.post(
        "/v1/api-keys", json={"name": taken, "rate_per_s": 1, "burst": 1}, headers=api.admin
    )
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    missing = api.client.get(f"/v1/api-keys/{unique('k')}", headers=api.admin)
    assert missing.status_code == 404


def test_limits_change_with_if_match_and_revocation_is_final(api: Api) -> None:
    created = _issue(api)
    name = created["name"]
    url = f"/v1/api-keys/{name}"
    no_etag = api.client.patch(url, json={"rate_per_s": 50}, headers=api.admin)
    assert no_etag.status_code == 428
    stale_etag = api.headers(**{"If-Match": '"9"'})
    stale = api.client.patch(url, json={"rate_per_s": 50}, headers=stale_etag)
    assert stale.status_code == 412
    etag = api.client.get(url, headers=api.admin).headers["ETag"]
    updated = api.ok("PATCH", url, json={"rate_per_s": 50, "models": ["mlp"]},
                     headers=api.headers(**{"If-Match": etag}))  # fmt: skip
    assert (updated["rate_per_s"], updated["models"]) == (50, ["mlp"])
    assert updated["row_version"] == created["row_version"] + 1

    api.ok("DELETE", url, 204)
    api.ok("DELETE", url, 204)  # idempotent
    assert api.ok("GET", url)["revoked_at"] is not None
    after = api.client.patch(url, json={"burst": 2}, headers=api.headers(**{"If-Match": "*"}))
    assert after.status_code == 409 and "revoked" in after.json()["detail"]
    active = api.ok("GET", "/v1/api-keys", params={"limit": 500})["items"]
    assert name not in {k["name"] for k in active}
    everything = api.ok("GET", "/v1/api-keys", params={"limit": 500, "include_revoked": True})
    assert name in {k["name"] for k in everything["items"]}
    actions = [
        e["action"]
        for e in api.ok("GET", "/v1/audit", params={"entity": "api_key", "entity_key": name})[
            "items"
        ]
    ]
    assert actions == ["revoke", "update", "create"]  # newest first; the repeat wrote nothing


def test_keys_are_admin_only(api: Api) -> None:
    read = api.token("read")
    assert api.client.get("/v1/api-keys", headers=api.headers(read)).status_code == 403
    body = {"name": unique("k"), "rate_per_s": 1, "burst": 1}
    r = api.client.post("/v1/api-keys", json=body, headers=api.headers(read))
    assert r.status_code == 403


def test_issued_changed_and_revoked_keys_reach_the_keyring(api: Api) -> None:
    created = _issue(api, models=["mlp"])
    name, digest = created["name"], sha256(created["key"].encode())
    grant = wait_until(lambda: _keyring(api).get(name), timeout=10, what="key in the keyring")
    assert grant == {
        "name": name, "sha256": digest, "rate_per_s": 5.0, "burst": 10.0, "models": ["mlp"],
        "tokens_per_minute": None,
        "priority": "interactive",
        "deadline_ms": None,
    }  # fmt: skip
    etag = api.client.get(f"/v1/api-keys/{name}", headers=api.admin).headers["ETag"]
    api.ok("PATCH", f"/v1/api-keys/{name}", json={"burst": 99},
           headers=api.headers(**{"If-Match": etag}))  # fmt: skip
    wait_until(
        lambda: _keyring(api).get(name, {}).get("burst") == 99.0,
        timeout=10,
        what="new burst in the keyring",
    )
    api.ok("DELETE", f"/v1/api-keys/{name}", 204)
    wait_until(lambda: name not in _keyring(api), timeout=10, what="key gone from the keyring")


def test_a_token_budget_reaches_the_keyring_and_usage_is_read_from_redis(api: Api) -> None:
    import asyncio

    from router.token_budget import RedisTokenBudget

    services.require_redis()
    created = _issue(api, tokens_per_minute=6000)
    name = created["name"]
    assert created["tokens_per_minute"] == 6000
    wait_until(
        lambda: _keyring(api).get(name, {}).get("tokens_per_minute") == 6000.0,
        timeout=10,
        what="token budget in the keyring",
    )
    bad = api.client.post(
        "/v1/api-keys", json={**_body(), "tokens_per_minute": 0}, headers=api.admin
    )
    assert bad.status_code == 422 and "tokens_per_minute" in bad.text
    etag = api.client.get(f"/v1/api-keys/{name}", headers=api.admin).headers["ETag"]
    cleared = api.ok("PATCH", f"/v1/api-keys/{name}", json={"tokens_per_minute": None},
                     headers=api.headers(**{"If-Match": etag}))  # fmt: skip
    assert cleared["tokens_per_minute"] is None
    assert api.ok("GET", f"/v1/api-keys/{name}/usage")["total_tokens"] == 0

    async def count() -> None:  # what a router does when an answer ends
        budget = RedisTokenBudget(services.REDIS_URL)
        try:
            await budget.settle(name, 6000, 100, 7, 40)
            await budget.settle(name, None, 0, 3, 10)
        finally:
            await budget.close()

    asyncio.run(count())
    usage = api.ok("GET", f"/v1/api-keys/{name}/usage")
    assert usage == {"name": name, "requests": 2, "prompt_tokens": 10,
                     "completion_tokens": 50, "total_tokens": 60}  # fmt: skip
    assert api.client.get("/v1/api-keys/never-issued/usage", headers=api.admin).status_code == 404


def test_a_key_class_and_default_deadline_reach_the_keyring(api: Api) -> None:
    plain = _issue(api)
    assert (plain["priority"], plain["deadline_ms"]) == ("interactive", None)
    created = _issue(api, priority="batch", deadline_ms=30000)
    name = created["name"]
    assert (created["priority"], created["deadline_ms"]) == ("batch", 30000)
    wait_until(
        lambda: (
            _keyring(api).get(name, {}).get("priority") == "batch"
            and _keyring(api)[name].get("deadline_ms") == 30000.0
        ),
        timeout=10,
        what="class and deadline in the keyring",
    )
    for bad in ({"priority": "urgent"}, {"deadline_ms": 0}, {"deadline_ms": 1e9}):
        r = api.client.post("/v1/api-keys", json={**_body(), **bad}, headers=api.admin)
        assert r.status_code == 422 and next(iter(bad)) in r.text
    url = f"/v1/api-keys/{name}"
    etag = api.client.get(url, headers=api.admin).headers["ETag"]
    changed = api.ok("PATCH", url, json={"priority": "interactive", "deadline_ms": None},
                     headers=api.headers(**{"If-Match": etag}))  # fmt: skip
    assert (changed["priority"], changed["deadline_ms"]) == ("interactive", None)
    etag = api.client.get(url, headers=api.admin).headers["ETag"]
    r = api.client.patch(url, json={"priority": None},
                         headers=api.headers(**{"If-Match": etag}))  # fmt: skip
    assert r.status_code in (400, 422) and "priority" in r.text
    wait_until(
        lambda: _keyring(api).get(name, {}).get("priority") == "interactive",
        timeout=10,
        what="the change in the keyring",
    )
