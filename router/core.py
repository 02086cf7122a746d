"""The router's core: authenticate, limit, locate, choose, forward, fail over.

Transports call :meth:`RouterCore.handle` with a parsed request; everything
below is independent of sockets except the upstream pool. The region choice is
delegated to a routing policy object (``router.policies``), the very one the
fleet simulator drives, over this router's own ``RouterStats``. The OpenAI paths and what
generative requests add (token budgets, KV-aware worker choice, the stream relay with its
mid-stream continuation) live in ``router.openai_routes`` and forward through
:meth:`RouterCore.forward`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from urllib.parse import urlsplit

import orjson

from meridian.deadline import DEADLINE_HEADER, parse_deadline_ms
from meridian.eventwait import wait_event
from meridian.keyring import ApiKeyGrant, ApiKeyring, Priority
from meridian.snapshot import RegionView, RoutingSnapshot, WorkerView
from router.admission import (
    ADMIT,
    OPENAI_TIMEOUT_HEADER,
    PRIORITY_HEADER,
    Admission,
    AdmissionConfig,
    AdmissionCounts,
    Decision,
    implied_deadline_ms,
    request_priority,
)
from router.attempts import Attempts, Call
from router.brownout import (
    VARIANT_HEADER,
    BrownoutConfig,
    BrownoutLedger,
    BrownoutPolicy,
    Overflow,
)
from router.continuation import TOKEN_IDS_HEADER, Generation
from router.demand import DemandNotifier, nearest_deployment_region
from router.figures import FigureBook
from router.hedging import Hedging
from router.hold import HoldQueue
from router.http11 import HOP_BY_HOP, Request, Response, StreamResponse
from router.keys import ApiKeys
from router.locate import EDGE_HEADER, ClientLocator
from router.loop_lag import LoopLag
from router.metrics import CONTENT_TYPE as METRICS_TYPE
from router.metrics import GenerationMetrics, RouterMetrics
from router.mirror import Mirrors
from router.observations import Observations
from router.openai_routes import OpenAIRoutes
from router.outliers import WorkerOutliers
from router.policies import (
    GenerativeRequest,
    KvAwarePolicy,
    RouteRequest,
    RouterStats,
    RoutingPolicy,
    StatsConfig,
    VersionPicker,
    choose_worker,
    serving_workers,
)
from router.probes import OutlierProbes
from router.ratelimit import RateLimiter
from router.replies import JSON, error
from router.resilience import LastGoodView, RetryBudget
from router.settings import RouterSettings
from router.snapshot_store import KeyringStore, SnapshotStore
from router.token_budget import LocalTokenBudget, TokenBudget
from router.traffic import TrafficReporter
from router.unmonitored import UnmonitoredRegions
from router.upstream import (
    UpstreamPool,
)

__all__ = ["RouterCore"]

log = logging.getLogger(__name__)

SERVER_METADATA = orjson.dumps(
    {"name": "meridian-router", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
)
STREAMED_REST = frozenset({"generate_stream"})
NOT_PASSED = frozenset({TOKEN_IDS_HEADER, DEADLINE_HEADER})  # the router sets these itself


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
        policy: RoutingPolicy,
        pool: UpstreamPool,
        limiter: RateLimiter,
        locator: ClientLocator,
        rng: random.Random | None = None,
        demand: DemandNotifier | None = None,
        keyring: KeyringStore | None = None,
        token_budget: TokenBudget | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.policy = policy
        self.pool = pool
        self.limiter = limiter
        self.locator = locator
        self.keyring = keyring or KeyringStore()
        self.token_budget: TokenBudget = token_budget or LocalTokenBudget()
        self._keys: tuple[ApiKeyring | None, ApiKeys] = (None, ApiKeys(()))
        self.rng = rng or random.Random()
        self.stats = RouterStats(
            StatsConfig(
                circuit_errors=settings.breaker_threshold,
                circuit_open_s=settings.breaker_cooldown_s,
            )
        )
        self.observed = Observations(self.stats)
        self.lag = LoopLag()  # started by the server: the router's own stalls, not the regions'
        self.outliers = WorkerOutliers()
        self.last_good = LastGoodView()
        self.unmonitored = UnmonitoredRegions(settings.unmonitored_grace_s)
        self._ranked: dict[tuple[object, ...], list[str]] = {}
        self.outstanding: dict[str, int] = defaultdict(int)  # per worker id
        # generative requests: distance, queues and where each prompt prefix is cached
        self.kv_policy = KvAwarePolicy()
        self._versions: tuple[RoutingSnapshot | None, VersionPicker | None] = (None, None)
        # per-request lookups kept between requests: workers serving (region, model) in
        # ``_serving_snap``, worker endpoints as (host, port), route requests by location
        self._serving: dict[tuple[str, str, str], tuple[WorkerView, ...]] = {}
        self._serving_snap: RoutingSnapshot | None = None
        self._endpoints: dict[str, tuple[str, int]] = {}
        self._routes: dict[tuple[str, float, float], RouteRequest] = {}
        self.budget = RetryBudget(ratio=settings.retry_ratio)
        self.counters: dict[str, int] = defaultdict(int)
        self.probes = OutlierProbes(
            pool, self.outliers, self.stats, self.counters, self.endpoint, self.lag,
            timeout_s=settings.attempt_timeout_s,
        )  # fmt: skip
        self.demand = demand
        self.held = 0  # requests waiting for a first worker right now
        self.cold_starts_ms: collections.deque[float] = collections.deque(maxlen=100)
        self.openai = OpenAIRoutes(self)
        self.attempts = Attempts(self)
        self.hedging = Hedging()
        self.admission = Admission(
            AdmissionConfig(
                interactive_max_load=settings.admit_interactive_max_load,
                batch_max_load=settings.admit_batch_max_load,
                interactive_deadline_share=settings.admit_interactive_deadline_share,
                batch_deadline_share=settings.admit_batch_deadline_share,
                hold_batch=settings.hold_batch_max > 0,
            )
        )
        self.hold = HoldQueue(
            settings.hold_batch_max, self._batch_has_room,
            max_per_key=settings.hold_batch_max_per_key,
        )  # fmt: skip
        self.admission_counts = AdmissionCounts()
        self.brownout = BrownoutPolicy(
            BrownoutConfig(max_load=settings.brownout_max_load, hold_s=settings.brownout_hold_s)
        )
        self.brownout_ledger = BrownoutLedger(settings.brownout_hold_s)
        self.generation = GenerationMetrics()
        self.metrics = RouterMetrics(self)
        # per version and region outcomes and latencies (rollout gates), and mirrored requests
        self.figures = FigureBook()
        self.mirrors = Mirrors(pool, self.figures, self.endpoint, self.rng,
                               timeout_s=settings.attempt_timeout_s)  # fmt: skip
        # the console's map: requests per client area and region (set by the server)
        self.traffic: TrafficReporter | None = None

    # --- entry point ---------------------------------------------------------------------

    async def handle(self, req: Request) -> Response | StreamResponse:
        """The answer to ``req``; a whole answer says in ``Server-Timing`` how long the
        router held it (``router;dur=`` in ms, from the parsed request to the answer)."""
        started = time.monotonic()
        response = await self._answer(req)
        if isinstance(response, Response):
            took = f"router;dur={(time.monotonic() - started) * 1000.0:.3f}".encode()
            response.headers = [*response.headers, (b"server-timing", took)]  # never shared
        return response

    async def _answer(self, req: Request) -> Response | StreamResponse:
        path = req.path
        if path == "/v2/health/live":
            return Response(200, b'{"live":true}', JSON)
        if path == "/v2/health/ready":
            return self._ready()
        if path == "/v2":
            return Response(200, SERVER_METADATA, JSON)
        if path == "/metrics":
            return Response(200, self.metrics.render(), [(b"content-type", METRICS_TYPE)])
        if path.startswith("/v1/"):
            return await self.openai.handle(req)
        target = _model_path(path)
        if target is None:
            return error(404, f"no route for {req.method} {path}")
        denied, grant = await self.admit(req, target[0])
        if denied is not None:
            return denied
        return await self.forward(req, *target, stream=target[2] in STREAMED_REST, grant=grant)

    # --- OpenAI paths ----------------------------------------------------------------------

    def _api_keys(self, ring: ApiKeyring) -> ApiKeys:
        cached_ring, keys = self._keys
        if cached_ring is not ring:
            keys = ApiKeys(ring.keys)
            self._keys = (ring, keys)
        return keys

    async def admit(self, req: Request, model: str) -> tuple[Response | None, ApiKeyGrant | None]:
        """A refusal, or None and the caller's key (when keys are required)."""
        s = self.settings
        grant = None
        if s.require_api_key:
            presented = req.header(b"x-api-key")
            auth = req.header(b"authorization")
            if presented is None and auth is not None and auth[:7].lower() == b"bearer ":
                presented = auth[7:].strip()
            if presented is None:
                message = "an API key is required (x-api-key or Authorization: Bearer)"
                return error(401, message), None
            ring = self.keyring.current
            if ring is None:
                return error(503, "no API keyring yet", [(b"retry-after", b"1")]), None
            grant = self._api_keys(ring).lookup(presented)
            if grant is None:
                return error(401, "unknown or revoked API key"), None
            if grant.models and model not in grant.models:
                return error(403, f"API key {grant.name!r} may not call model '{model}'"), None
            bucket, rate, burst = "key:" + grant.name, grant.rate_per_s, grant.burst
        elif s.anonymous_rate > 0:
            address = self.locator.client_address(req.client_host, req.headers)
            client = str(address) if address is not None else req.client_host
            bucket, rate, burst = "ip:" + client, s.anonymous_rate, s.anonymous_burst
        else:
            return None, None
        wait = await self.limiter.acquire(bucket, rate, burst)
        if wait > 0:
            self.counters["rate_limited"] += 1
            retry_after = str(max(1, int(wait + 0.999))).encode()
            return error(429, "rate limit exceeded", [(b"retry-after", retry_after)]), None
        return None, grant

    # --- routing and failover --------------------------------------------------------------

    def rank(self, snap: RoutingSnapshot, route: RouteRequest, now: float) -> list[str]:
        """The policy's ranking, reused for clients within about 25 km during one refresh
        period of the policy (it would give the same answer); errors invalidate at once.
        Not reused when the policy draws among near-best regions (``spread_ms``)."""
        refresh = getattr(self.policy, "refresh_s", 0.0)
        if refresh <= 0 or getattr(self.policy, "spread_ms", 0.0) > 0:
            # a randomised choice is drawn per request (the policy caches its costs itself)
            return self.policy.rank(snap, self.stats, route, now)
        key = (
            snap.version, route.model, int(route.lat * 4), int(route.lon * 4),
            self.stats.error_version, int(now / refresh),
        )  # fmt: skip
        ranked = self._ranked.get(key)
        if ranked is None:
            if len(self._ranked) >= 4096:
                self._ranked.clear()
            ranked = self._ranked[key] = self.policy.rank(snap, self.stats, route, now)
        return ranked

    def version_picker(self, snap: RoutingSnapshot) -> VersionPicker:
        cached_snap, picker = self._versions
        if cached_snap is not snap or picker is None:
            picker = VersionPicker(snap)
            self._versions = (snap, picker)
        return picker

    def workers(
        self, snap: RoutingSnapshot, region: RegionView, model: str, version: str | None = None
    ) -> tuple[WorkerView, ...]:
        """``serving_workers`` of the region (of ``version`` when given), computed once per
        snapshot."""
        if snap is not self._serving_snap:
            self._serving = {}
            self._serving_snap = snap
        key = (region.name, model, version or "")
        workers = self._serving.get(key)
        if workers is None:
            workers = self._serving[key] = serving_workers(region, model, version)
        return workers

    def endpoint(self, endpoint: str) -> tuple[str, int]:
        """A worker's base URL as (host, port), parsed once."""
        hostport = self._endpoints.get(endpoint)
        if hostport is None:
            url = urlsplit(endpoint)
            hostport = (url.hostname or "127.0.0.1", url.port or 80)
            if len(self._endpoints) >= 4096:
                self._endpoints.clear()
            self._endpoints[endpoint] = hostport
        return hostport

    def _route(self, model: str, lat: float, lon: float) -> RouteRequest:
        """The (immutable) route request for a model and client location, shared."""
        key = (model, lat, lon)
        route = self._routes.get(key)
        if route is None:
            if len(self._routes) >= 4096:
                self._routes.clear()
            route = self._routes[key] = RouteRequest(model, lat, lon)
        return route

    async def wan_delay(self, snap: RoutingSnapshot, route: RouteRequest, region: str) -> None:
        """Demo only: hold the request for the modelled client-to-region round trip.

        On one machine every socket is loopback; this makes a far region cost what it
        would over the wide area, so routing decisions show in the latencies.
        """
        table = self.policy.table(snap, route.model)
        i = table.index.get(region)
        if i is not None:
            await asyncio.sleep(float(table.rtt_row(route)[i]) / 1000.0)

    async def forward(
        self,
        req: Request,
        model: str,
        version: str | None,
        rest: str,
        *,
        target_path: str | None = None,
        stream: bool = False,
        gen: Generation | None = None,
        generative: GenerativeRequest | None = None,
        grant: ApiKeyGrant | None = None,
    ) -> Response | StreamResponse:
        """Route ``req`` (admission, choice, attempts, failover); as it finishes, a held
        batch request may take the room it leaves."""
        try:
            return await self._forward(req, model, version, rest, target_path=target_path,
                                       stream=stream, gen=gen, generative=generative,
                                       grant=grant)  # fmt: skip
        finally:
            if self.hold.held:
                self.hold.pump()

    async def _forward(
        self,
        req: Request,
        model: str,
        version: str | None,
        rest: str,
        *,
        target_path: str | None = None,
        stream: bool = False,
        gen: Generation | None = None,
        generative: GenerativeRequest | None = None,
        grant: ApiKeyGrant | None = None,
    ) -> Response | StreamResponse:
        snap = self.store.current
        if snap is None:
            return error(503, "no routing snapshot yet", [(b"retry-after", b"1")])
        snap = self.unmonitored.view(self.last_good.view(snap, model))
        s = self.settings
        started = time.monotonic()
        try:
            budget_ms = parse_deadline_ms(req.header(DEADLINE_HEADER))
        except ValueError as exc:
            return error(400, str(exc))
        if budget_ms is None:
            openai_timeout = None if stream else req.header(OPENAI_TIMEOUT_HEADER)
            budget_ms = implied_deadline_ms(grant, openai_timeout)
        priority = request_priority(grant, req.header(PRIORITY_HEADER))
        deadline = started + s.total_timeout_s
        if budget_ms is not None:
            deadline = min(deadline, started + budget_ms / 1000.0)
        self.budget.record_request(started)
        self.hedging.budget.record_request(started)
        client = self.locator.locate(req.client_host, req.header(EDGE_HEADER), req.headers)
        route = self._route(model, client.lat, client.lon)
        ranked = self.rank(snap, route, started)
        if not ranked and not any(r.serves(model) for r in snap.regions):
            homes = [snap.region(d.region) for d in snap.deployments if d.model == model]
            if not homes:
                return error(404, f"no healthy region serves model '{model}'",
                              [(b"retry-after", b"1")])  # fmt: skip
            if not any(r is not None and r.state.routable for r in homes):
                return error(503, f"every region that deploys model '{model}' is down",
                              [(b"retry-after", b"1")])  # fmt: skip
            # deployed in a live region, but no worker anywhere (scaled to zero): hold
            held = await self._hold(model, route, deadline)
            if isinstance(held, Response):
                return held
            snap = held
            ranked = self.rank(snap, route, time.monotonic())
        if not ranked and any(r.serves(model) for r in snap.regions):
            # every serving region is ejected by its circuit: try them rather than refuse
            ranked = [r.name for r in snap.routable_regions() if r.serves(model)]
        if not ranked:
            return error(503, f"no healthy region serves model '{model}'",
                          [(b"retry-after", b"1")])  # fmt: skip
        best = ranked[0]

        def expected(view: RoutingSnapshot = snap) -> float | None:
            return self.policy.expected_ms(view, self.stats, route, best, started)

        decision = self.admission.decide(snap, self.stats, model, priority, started,
                                         deadline_ms=budget_ms, expected_ms=expected,
                                         best=best)  # fmt: skip
        if decision.verdict == "hold":
            key = "key:" + grant.name if grant is not None else "ip:" + req.client_host
            wait_s = min(s.hold_batch_max_wait_s, deadline - time.monotonic())
            expected_ms = expected()
            if expected_ms is not None:  # released later than this, it could not finish
                wait_s -= expected_ms / 1000.0
            decision = await self._held(key, model, wait_s, decision)
            if decision.verdict == "admit":
                snap, ranked, decision = self._released(snap, route, ranked, priority,
                                                        started, budget_ms)  # fmt: skip
        self.admission_counts.count(decision, priority)
        if decision.verdict != "admit":
            if decision.reason == "deadline":
                self.counters["deadline_refused"] += 1
            retry = str(decision.retry_after_s).encode()
            return error(503, decision.message, [(b"retry-after", retry)])
        picks: dict[str, WorkerView] = {}
        if generative is not None:
            ranked, picks = self.openai.order(snap, route, generative, ranked)
        headers = [(k, v) for k, v in req.headers if k not in HOP_BY_HOP and k not in NOT_PASSED]
        if gen is not None:
            headers.append((TOKEN_IDS_HEADER, b"1"))
        tail = ("/" + rest) if rest else ""
        query = ("?" + req.query) if req.query else ""
        attempts = 0
        last_error = "no region could be tried"
        outliers = not self.outliers.quiet and self._some_usable(snap, ranked, model, started)
        call = Call(snap, route, model, req.method, query, headers, req.body, deadline,
                     stream, gen, started, budget_ms is not None)  # fmt: skip
        for i, name in enumerate(ranked):
            now = time.monotonic()
            if now >= deadline or attempts >= s.max_attempts:
                break
            region = snap.region(name)
            if region is None:
                continue
            target, chosen = self.attempts.place(snap, model, version, rest, name, target_path)
            serving: Sequence[WorkerView] = self.workers(snap, region, model, chosen)
            if chosen and not serving and version is None:  # no worker of the picked version
                target = self.attempts.unversioned(model, rest, target_path)
                serving = self.workers(snap, region, model)
            if outliers:
                serving = self.outliers.usable(serving, now)
            pick = picks.get(name)
            worker = (
                pick
                if pick is not None and any(w.worker_id == pick.worker_id for w in serving)
                else choose_worker(serving, self.rng, self.outstanding)
            )
            if worker is None:
                continue
            overflow = None if generative else self._overflow(snap, region, model, version,
                                                               serving, now)  # fmt: skip
            if overflow is not None:
                worker = overflow.worker
            if attempts > 0 and not self.budget.try_retry(now):
                last_error = "retry budget exhausted"
                break
            attempts += 1
            first = self.attempts.attempt(call, region, worker, target, attempts)
            delay = self.hedging.delay_s(model, stream)
            if delay is None:
                outcome = await first
            else:

                def backup(
                    region: RegionView = region,
                    worker: WorkerView = worker,
                    later: Sequence[str] = ranked[i + 1 :],
                    usable: Sequence[WorkerView] = serving,
                    primary: str = target,
                    picked: str | None = chosen,
                ) -> tuple[RegionView, WorkerView, str] | None:
                    return self.attempts.hedge_choice(call, region, worker, later, usable, version,
                                              rest, target_path, primary, picked)  # fmt: skip

                outcome = await self.attempts.hedged(call, first, worker, backup, delay, attempts)
            if isinstance(outcome, str):
                last_error = outcome
                continue
            if self.traffic is not None:
                self.traffic.note_answer(client.lat, client.lon, outcome.headers)
            if overflow is not None:
                outcome.headers.append((VARIANT_HEADER, overflow.variant.encode()))
            return outcome
        self.counters["failed"] += 1
        if not self.outliers.quiet:  # keep probing the ejected: nothing else will readmit them
            path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + tail
            now = time.monotonic()
            self.probes.start_due(snap, model, path + query, req.method, headers, req.body, now)
        tried = [(b"x-meridian-attempts", str(attempts).encode())]
        if time.monotonic() >= deadline or call.deadline_ran_out:
            if budget_ms is not None and started + budget_ms / 1000.0 <= deadline:
                self.counters["deadline_expired"] += 1
                return error(504, f"the request's deadline of {budget_ms:g} ms passed after "
                             f"{attempts} attempts: {last_error}", tried)  # fmt: skip
            return error(504, f"all regions failed after {attempts} attempts: {last_error}",
                          tried)  # fmt: skip
        return error(502, f"all regions failed after {attempts} attempts: {last_error}", tried)

    # --- brownout: a saturated region's overflow to its degrade_to variant ------------------

    def _overflow(
        self,
        snap: RoutingSnapshot,
        region: RegionView,
        model: str,
        version: str | None,
        base: Sequence[WorkerView],
        now: float,
    ) -> Overflow | None:
        """The variant worker to serve this request on, or None to stay on the base workers
        (``router.brownout``)."""
        if not self.brownout.config.enabled:
            return None
        observed_ms = self.stats.region(region.name, now).service_ms
        overflow = self.brownout.decide(
            snap, region, model, version, base, self.outstanding, self.rng, observed_ms
        )
        if overflow is not None:
            self.brownout_ledger.overflowed(region.name, model, overflow, now)
        return overflow

    # --- outliers: ejection on refusal, probation of slow workers ----------------------------

    def refused(
        self, snap: RoutingSnapshot, region: RegionView, model: str, worker: WorkerView, now: float
    ) -> None:
        """No connection to ``worker``: eject it now; eject its region once none is left."""
        self.observed.error(region.name, now)
        if self.outliers.eject(worker.worker_id, worker.endpoint):
            self.counters["worker_ejections"] += 1
            log.warning("ejected worker %s of region %s: connection failed",
                        worker.worker_id, region.name)  # fmt: skip
        if all(self.outliers.is_ejected(w.worker_id) for w in self.workers(snap, region, model)):
            self.stats.open_circuit(region.name, now)

    def _some_usable(
        self, snap: RoutingSnapshot, ranked: list[str], model: str, now: float
    ) -> bool:
        """Whether any ranked region has a worker that is neither ejected nor passed over;
        when none has, every worker is tried anyway (Envoy's panic: the router's own view
        may be what is wrong, say after a blip of its network)."""
        for name in ranked:
            region = snap.region(name)
            if region is not None and self.outliers.usable(self.workers(snap, region, model), now):
                return True
        return False

    async def close(self) -> None:
        """Refuse the held requests, cancel the probes and mirrored requests in flight."""
        await self.hold.close()
        await self.probes.close()
        await self.mirrors.close()
        await self.lag.close()

    def took_ms(self, sent: float, stall_from: float, done: float) -> float:
        """What an attempt sent at ``sent`` (``time.monotonic()``) and answered at ``done``
        took, less the time this router's own loop was stalled meanwhile (``stall_from``
        is ``lag.stalled_ms()`` read when it was sent): the answer's lateness that was
        the router's, not the region's."""
        stalled = self.lag.stalled_ms() - stall_from
        return max((done - sent) * 1000.0 - stalled, 0.0)

    def excess_ms(self, took_ms: float, host: str, port: int, worker: WorkerView) -> float:
        """What an attempt took beyond one network round trip and the worker's own latency:
        the region's unexplained wait."""
        return took_ms - self.pool.network_ms(host, port) - worker.latency_p50_ms

    # --- the hold verdict: batch requests waiting for the load to fall ------------------------

    def _batch_has_room(self, model: str) -> bool:
        snap = self.store.current
        if snap is None:
            return False
        load = self.admission.load(snap, self.stats, model, time.monotonic())
        return not load >= self.admission.config.batch_max_load  # below, or unknown

    def _released(
        self,
        snap: RoutingSnapshot,
        route: RouteRequest,
        ranked: list[str],
        priority: Priority,
        started: float,
        budget_ms: float | None,
    ) -> tuple[RoutingSnapshot, list[str], Decision]:
        """A released request: ranked on what the router knows now, and refused after all
        when what is left of its deadline no longer covers the best region's time."""
        now = time.monotonic()
        model = route.model
        fresh = self.store.current
        if fresh is not None:
            snap = self.unmonitored.view(self.last_good.view(fresh, model))
            ranked = self.rank(snap, route, now) or ranked
        if budget_ms is None:
            return snap, ranked, ADMIT
        left_ms = (started - now) * 1000.0 + budget_ms
        best = ranked[0]
        late = self.policy.expected_ms(snap, self.stats, route, best, now)
        return snap, ranked, self.admission.by_deadline(late, left_ms, priority, model, best)

    async def _held(self, key: str, model: str, wait_s: float, held: Decision) -> Decision:
        """Hold a batch request in its key's queue: admitted once released, else refused."""
        outcome = await self.hold.hold(key, model, wait_s)
        if outcome == "released":
            return ADMIT
        retry = held.retry_after_s
        if outcome == "full":
            message = (
                f"{held.message}, and the {self.hold.max_held} places to wait (or "
                f"this key's {self.hold.max_per_key}) are taken; retry after {retry} s"
            )
            return Decision("refuse", "capacity", message, retry, held.load)
        if outcome == "expired":
            message = (
                f"{held.message}; it did not fall in the time this request's deadline "
                f"(or the hold limit) leaves; retry after {retry} s"
            )
            return Decision("refuse", "deadline", message, retry, held.load)
        return Decision("refuse", "shutdown", "the router is shutting down; retry", 1, held.load)

    @staticmethod
    def out_headers(
        headers: list[tuple[bytes, bytes]], region: str, attempts: int
    ) -> list[tuple[bytes, bytes]]:
        out = [(k, v) for k, v in headers if k not in HOP_BY_HOP]
        out.append((b"x-meridian-region", region.encode()))
        out.append((b"x-meridian-attempts", str(attempts).encode()))
        return out

    async def _hold(
        self, model: str, route: RouteRequest, deadline: float
    ) -> RoutingSnapshot | Response:
        """Wait (bounded) until a snapshot shows a routable worker for ``model``.

        Reports the demand to the control plane (at most once a second per model) so
        that it starts a worker, nearest the client where the model is deployed.
        """
        s = self.settings
        retry = [(b"retry-after", str(s.cold_start_retry_after_s).encode())]
        if s.cold_start_hold_s <= 0 or self.held >= s.cold_start_max_held:
            self.counters["cold_start_refused"] += 1
            return error(503, f"model '{model}' has no ready worker; it is being started",
                          retry)  # fmt: skip
        started = time.monotonic()
        until = min(deadline, started + s.cold_start_hold_s)
        self.held += 1
        self.counters["cold_start_held"] += 1
        try:
            while True:
                changed = self.store.changed  # before the check: no offer is missed
                snap = self.store.current
                if snap is not None and any(r.serves(model) for r in snap.routable_regions()):
                    waited = (time.monotonic() - started) * 1000.0
                    self.cold_starts_ms.append(round(waited, 1))
                    self.counters["cold_start_served"] += 1
                    return snap
                if self.demand is not None:
                    hint = nearest_deployment_region(snap, model, route.lat, route.lon)
                    self.demand.notify(model, hint)
                left = until - time.monotonic()
                if left <= 0:
                    break
                await wait_event(changed, min(left, 1.0))
        finally:
            self.held -= 1
        self.counters["cold_start_timeouts"] += 1
        return error(
            503,
            f"model '{model}' is scaled to zero and no worker became ready within "
            f"{until - started:.1f}s; retry later",
            retry,
        )

    # --- health ------------------------------------------------------------------------------

    def _keyring_details(self) -> dict[str, object]:
        if not self.settings.require_api_key:
            return {}
        ring, age = self.keyring.current, self.keyring.confirmed_age()
        return {
            "keyring_version": ring.version if ring else None,
            "keyring_confirmed_age_s": None if age is None else round(age, 3),
            "api_keys": len(ring.keys) if ring else 0,
        }

    def _ready(self) -> Response:
        snap = self.store.current
        age = self.store.confirmed_age()
        now = time.monotonic()
        details = {
            "ready": snap is not None and any(True for _ in snap.routable_regions()),
            "snapshot_version": snap.version if snap else None,
            "snapshot_confirmed_age_s": None if age is None else round(age, 3),
            "routable_regions": [r.name for r in snap.routable_regions()] if snap else [],
            "open_circuits": [
                r.name for r in snap.regions if self.stats.region(r.name, now).circuit_open
            ]
            if snap
            else [],
            "models_on_last_good_snapshot": sorted(self.last_good.held),
            "redis_ok": getattr(self.limiter, "redis_ok", None),
            **self._keyring_details(),
            "cold_start_held_now": self.held,
            "cold_start_last_ms": self.cold_starts_ms[-1] if self.cold_starts_ms else None,
        }
        return Response(200 if details["ready"] else 503, orjson.dumps(details), JSON)
