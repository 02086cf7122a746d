"""The router's core: authenticate, limit, locate, choose, forward, fail over.

Transports call :meth:`RouterCore.handle` with a parsed request; everything
below is independent of sockets except the upstream pool. The region choice is
delegated to a policy object (see :class:`Ranker`), the same one the simulator
drives.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import orjson

from meridian.snapshot import RegionView, RoutingSnapshot, WorkerView
from router.http11 import HOP_BY_HOP, Request, Response
from router.keys import ApiKeys
from router.locate import EDGE_HEADER, ClientLocator, Location
from router.ratelimit import RateLimiter
from router.resilience import CircuitBreaker, RetryBudget
from router.settings import RouterSettings
from router.snapshot_store import SnapshotStore
from router.upstream import UpstreamError, UpstreamPool

__all__ = ["Ranker", "RouterCore", "RouterStats"]

JSON = [(b"content-type", b"application/json")]
SERVER_METADATA = orjson.dumps(
    {"name": "meridian-router", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
)


class Ranker(Protocol):
    """Orders the regions able to serve ``model`` best first (the routing policy seam)."""

    def rank(
        self,
        snapshot: RoutingSnapshot,
        model: str,
        version: str | None,
        client: Location,
        stats: RouterStats,
        now: float,
    ) -> Sequence[RegionView]: ...


@dataclass
class RouterStats:
    """What this router has observed itself, per region and per worker."""

    ewma_latency_ms: dict[str, float] = field(default_factory=dict)
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    outstanding: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    alpha: float = 0.2

    def observe(self, region: str, latency_ms: float) -> None:
        prev = self.ewma_latency_ms.get(region)
        self.ewma_latency_ms[region] = (
            latency_ms if prev is None else prev + self.alpha * (latency_ms - prev)
        )

    def breaker(self, region: str, threshold: int, cooldown: float) -> CircuitBreaker:
        b = self.breakers.get(region)
        if b is None:
            b = self.breakers[region] = CircuitBreaker(threshold=threshold, cooldown=cooldown)
        return b


def _error(status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> Response:
    body = orjson.dumps({"error": message})
    return Response(status, body, JSON + (extra or []))


def _model_path(path: str) -> tuple[str, str | None, str] | None:
    """``/v2/models/{m}[/versions/{v}]/rest`` → (m, v, rest) or None."""
    if not path.startswith("/v2/models/"):
        return None
    parts = path[len("/v2/models/") :].split("/")
    if not parts[0]:
        return None
    model, version, rest = parts[0], None, parts[1:]
    if len(rest) >= 2 and rest[0] == "versions":
        version, rest = rest[1], rest[2:]
    return model, version, "/".join(rest)


class RouterCore:
    def __init__(
        self,
        settings: RouterSettings,
        store: SnapshotStore,
        ranker: Ranker,
        pool: UpstreamPool,
        limiter: RateLimiter,
        locator: ClientLocator,
        keys: ApiKeys | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ranker = ranker
        self.pool = pool
        self.limiter = limiter
        self.locator = locator
        self.keys = keys
        self.rng = rng or random.Random()
        self.stats = RouterStats()
        self.budget = RetryBudget(ratio=settings.retry_ratio)
        self.counters: dict[str, int] = defaultdict(int)

    # --- entry point ---------------------------------------------------------------------

    async def handle(self, req: Request) -> Response:
        path = req.path
        if path == "/v2/health/live":
            return Response(200, b'{"live":true}', JSON)
        if path == "/v2/health/ready":
            return self._ready()
        if path == "/v2":
            return Response(200, SERVER_METADATA, JSON)
        target = _model_path(path)
        if target is None:
            return _error(404, f"no route for {req.method} {path}")
        denied = await self._admit(req)
        if denied is not None:
            return denied
        return await self._forward(req, *target)

    # --- admission -------------------------------------------------------------------------

    async def _admit(self, req: Request) -> Response | None:
        s = self.settings
        if self.keys is not None:
            presented = req.header(b"x-api-key")
            auth = req.header(b"authorization")
            if presented is None and auth is not None and auth[:7].lower() == b"bearer ":
                presented = auth[7:].strip()
            if presented is None:
                return _error(401, "an API key is required (x-api-key or Authorization: Bearer)")
            policy = self.keys.lookup(presented)
            if policy is None:
                return _error(401, "unknown API key")
            bucket, rate, burst = "key:" + policy.name, policy.rate, policy.burst
        elif s.anonymous_rate > 0:
            bucket, rate, burst = "ip:" + req.client_host, s.anonymous_rate, s.anonymous_burst
        else:
            return None
        wait = await self.limiter.acquire(bucket, rate, burst)
        if wait > 0:
            self.counters["rate_limited"] += 1
            retry_after = str(max(1, int(wait + 0.999))).encode()
            return _error(429, "rate limit exceeded", [(b"retry-after", retry_after)])
        return None

    # --- routing and failover --------------------------------------------------------------

    def _pick_worker(
        self, region: RegionView, model: str, version: str | None
    ) -> WorkerView | None:
        key = f"{model}:{version}" if version else None
        prefix = model + ":"
        candidates = [
            w
            for w in region.workers
            if w.state.routable
            and any((m == key) if key else (m == model or m.startswith(prefix)) for m in w.models)
        ]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        a, b = self.rng.sample(candidates, 2)
        out = self.stats.outstanding
        load_a = a.queue_depth + a.in_flight + out[a.worker_id]
        load_b = b.queue_depth + b.in_flight + out[b.worker_id]
        return a if load_a <= load_b else b

    def _choose_version(self, snap: RoutingSnapshot, model: str) -> str | None:
        """Split traffic between versions of ``model`` by their deployment weights (canary)."""
        weights: dict[str, float] = defaultdict(float)
        for d in snap.deployments:
            if d.model == model:
                weights[d.version] += d.weight
        if len(weights) <= 1:
            return None
        total = sum(weights.values())
        if total <= 0:
            return None
        x = self.rng.random() * total
        for version, w in sorted(weights.items()):
            x -= w
            if x < 0:
                return version
        return None

    def _with_open_circuits_last(
        self, ranked: Sequence[RegionView], now: float
    ) -> list[RegionView]:
        """Regions whose breaker lets a request through, in rank order; ejected ones after.

        When every region is ejected the router still tries them (best first) rather
        than refusing outright.
        """
        s = self.settings
        allowed: list[RegionView] = []
        ejected: list[RegionView] = []
        for region in ranked:
            breaker = self.stats.breaker(region.name, s.breaker_threshold, s.breaker_cooldown_s)
            (allowed if breaker.allows(now) else ejected).append(region)
        return allowed + ejected

    async def _forward(self, req: Request, model: str, version: str | None, rest: str) -> Response:
        snap = self.store.current
        if snap is None:
            return _error(503, "no routing snapshot yet", [(b"retry-after", b"1")])
        s = self.settings
        started = time.monotonic()
        deadline = started + s.total_timeout_s
        self.budget.record_request(started)
        if version is None and rest == "infer":
            version = self._choose_version(snap, model)
        client = self.locator.locate(req.client_host, req.header(EDGE_HEADER))
        ranked = self.ranker.rank(snap, model, version, client, self.stats, started)
        if not ranked:
            return _error(
                404 if not any(r.serves(model) for r in snap.regions) else 503,
                f"no healthy region serves model '{model}'",
                [(b"retry-after", b"1")],
            )
        upstream_target = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        upstream_target += ("/" + rest) if rest else ""
        if req.query:
            upstream_target += "?" + req.query
        headers = [(k, v) for k, v in req.headers if k not in HOP_BY_HOP]
        attempts = 0
        last_error = "no region could be tried"
        for region in self._with_open_circuits_last(ranked, started):
            now = time.monotonic()
            if now >= deadline or attempts >= s.max_attempts:
                break
            breaker = self.stats.breaker(region.name, s.breaker_threshold, s.breaker_cooldown_s)
            worker = self._pick_worker(region, model, version)
            if worker is None:
                continue
            if attempts > 0 and not self.budget.try_retry(now):
                last_error = "retry budget exhausted"
                break
            attempts += 1
            url = urlsplit(worker.endpoint)
            host, port = url.hostname or "127.0.0.1", url.port or 80
            timeout = min(s.attempt_timeout_s, deadline - now)
            self.stats.outstanding[worker.worker_id] += 1
            try:
                upstream = await self.pool.request(
                    host, port, req.method, upstream_target, headers, req.body, timeout
                )
            except (UpstreamError, TimeoutError) as exc:
                breaker.record_failure(time.monotonic())
                self.counters["upstream_failures"] += 1
                last_error = f"region {region.name}: {exc or 'timed out'}"
                continue
            finally:
                self.stats.outstanding[worker.worker_id] -= 1
            if upstream.status >= 500:
                breaker.record_failure(time.monotonic())
                self.counters["upstream_5xx"] += 1
                last_error = f"region {region.name} answered {upstream.status}"
                continue
            breaker.record_success()
            elapsed_ms = (time.monotonic() - started) * 1000.0
            self.stats.observe(region.name, elapsed_ms)
            out_headers = [(k, v) for k, v in upstream.headers if k not in HOP_BY_HOP]
            out_headers.append((b"x-meridian-region", region.name.encode()))
            out_headers.append((b"x-meridian-attempts", str(attempts).encode()))
            self.counters["served"] += 1
            return Response(upstream.status, upstream.body, out_headers)
        self.counters["failed"] += 1
        status = 504 if time.monotonic() >= deadline else 502
        return _error(
            status,
            f"all regions failed after {attempts} attempts: {last_error}",
            [(b"x-meridian-attempts", str(attempts).encode())],
        )

    # --- health ------------------------------------------------------------------------------

    def _ready(self) -> Response:
        snap = self.store.current
        age = self.store.confirmed_age()
        details = {
            "ready": snap is not None and any(True for _ in snap.routable_regions()),
            "snapshot_version": snap.version if snap else None,
            "snapshot_confirmed_age_s": None if age is None else round(age, 3),
            "routable_regions": [r.name for r in snap.routable_regions()] if snap else [],
            "open_circuits": [
                name for name, b in self.stats.breakers.items() if b.is_open(time.monotonic())
            ],
            "redis_ok": getattr(self.limiter, "redis_ok", None),
        }
        return Response(200 if details["ready"] else 503, orjson.dumps(details), JSON)
