"""``/v1/api-keys``: end users' keys for the router, with their rate limits.

The key is shown once, at creation. Routers learn of new, changed and revoked keys
through the keyring (digests and limits only), within about a second.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from control_plane.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    ApiKeyUpdate,
    ApiKeyUsage,
    Page,
)
from meridian.errors import Unavailable

from .deps import Admin, IfMatch, Paging, RegistryDep, set_etag
from .errors import ETAG_WRITE, WRITE, error_responses

router = APIRouter(prefix="/api-keys", tags=["api keys"])


@router.post("", status_code=201, responses=error_responses(*WRITE))
def create_api_key(
    body: ApiKeyCreate, registry: RegistryDep, caller: Admin, response: Response
) -> ApiKeyCreated:
    created = registry.create_api_key(body, actor=caller.name)
    set_etag(response, created.row_version)
    response.headers["Location"] = f"/v1/api-keys/{created.name}"
    return created


@router.get("")
def list_api_keys(
    registry: RegistryDep, _: Admin, page: Paging, include_revoked: bool = False
) -> Page[ApiKeyPublic]:
    return registry.list_api_keys(
        include_revoked=include_revoked, limit=page.limit, offset=page.offset
    )


@router.get("/{name}", responses=error_responses(404))
def get_api_key(name: str, registry: RegistryDep, _: Admin, response: Response) -> ApiKeyPublic:
    key = registry.get_api_key(name)
    set_etag(response, key.row_version)
    return key


@router.patch("/{name}", responses=error_responses(*ETAG_WRITE))
def update_api_key(
    name: str,
    body: ApiKeyUpdate,
    caller: Admin,
    expected: IfMatch,
    registry: RegistryDep,
    response: Response,
) -> ApiKeyPublic:
    """Change a key's limits or models (If-Match as for every update)."""
    key = registry.update_api_key(name, body, expected_version=expected, actor=caller.name)
    set_etag(response, key.row_version)
    return key


@router.delete("/{name}", status_code=204, responses=error_responses(*WRITE))
def revoke_api_key(name: str, registry: RegistryDep, caller: Admin) -> None:
    """Revoke a key (idempotent); the name is not reused."""
    registry.revoke_api_key(name, actor=caller.name)


# where routers count each key's usage (router.token_budget.USAGE_PREFIX)
USAGE_PREFIX = "meridian:usage:"


@router.get("/{name}/usage", responses=error_responses(404))
def api_key_usage(name: str, registry: RegistryDep, _: Admin, request: Request) -> ApiKeyUsage:
    """Requests and tokens the routers counted for this key (generation and embedding
    requests), read from the Redis the routers share."""
    registry.get_api_key(name)  # 404 for a key never issued
    url = getattr(request.app.state.settings, "redis_url", None)
    if not url:
        raise Unavailable(
            "token usage is counted in the routers' Redis; start the control plane with "
            "MERIDIAN_REDIS_URL to read it"
        )
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        raw = client.hgetall(USAGE_PREFIX + name)
    except redis.RedisError as exc:
        raise Unavailable(f"cannot read usage from Redis: {exc}") from None
    finally:
        client.close()
    counts = {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}
    prompt, completion = counts.get("prompt_tokens", 0), counts.get("completion_tokens", 0)
    return ApiKeyUsage(
        name=name,
        requests=counts.get("requests", 0),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
    )
