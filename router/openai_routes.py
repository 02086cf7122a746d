"""The OpenAI paths of the router and what generative requests need beyond the one-shot
core: ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/embeddings`` routed like the
inference paths (same keys, limits and failover, through :meth:`RouterCore.forward`),
``/v1/models`` as the union of what the fleet serves, token budgets reserved at admission
and settled when the answer (or stream) ends, the KV-aware choice of worker, and the relay
of a streamed generation with its mid-stream continuation on another worker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson

from meridian.keyring import ApiKeyGrant
from meridian.snapshot import RoutingSnapshot, WorkerView
from router.continuation import TOKEN_IDS_HEADER, Generation
from router.generative_route import generative_request
from router.http11 import Request, Response, StreamResponse
from router.policies import GenerativeRequest, RouteRequest, choose_generative, choose_worker
from router.replies import EVENT_STREAM, JSON, header_value
from router.streaming import relay_generation, relay_raw
from router.token_budget import estimate_tokens
from router.upstream import UpstreamError, UpstreamStream

if TYPE_CHECKING:
    from router.core import RouterCore

__all__ = ["GENERATIONS", "OpenAIRoutes"]

OPENAI_POST = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings"})
GENERATIONS = frozenset({"/v1/completions", "/v1/chat/completions"})


def openai_error(status: int, message: str, param: str | None = None) -> Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return Response(status, orjson.dumps(body), JSON)


def usage_of(response: Response) -> tuple[int, int]:
    """(prompt, completion) tokens from an OpenAI answer's usage; (0, 0) if it has none."""
    if response.status >= 400:
        return 0, 0
    try:
        usage = orjson.loads(response.body).get("usage") or {}
        return int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 0, 0


class OpenAIRoutes:
    """The ``/v1/`` paths of one :class:`RouterCore` (which it reads and forwards through)."""

    def __init__(self, core: RouterCore) -> None:
        self.core = core

    async def handle(self, req: Request) -> Response | StreamResponse:
        core = self.core
        path = req.path
        if path == "/v1/models" and req.method == "GET":
            return self.model_list()
        if path not in OPENAI_POST:
            return openai_error(404, f"no route for {req.method} {path}")
        if req.method != "POST":
            return openai_error(405, f"{path} takes POST")
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            return openai_error(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return openai_error(400, "the request body must be a JSON object")
        model_ref = body.get("model")
        if not isinstance(model_ref, str) or not model_ref:
            return openai_error(400, "'model' is required: the name of a served model", "model")
        model = model_ref.partition(":")[0]
        denied, grant = await core.admit(req, model)
        if denied is not None:
            return denied
        reserved = 0
        if grant is not None and grant.tokens_per_minute is not None:
            reserved = estimate_tokens(path, body)
            refused = await self._reserve_tokens(grant.name, grant.tokens_per_minute, reserved)
            if refused is not None:
                return refused
        stream = body.get("stream") is True
        gen = None
        if stream and path in GENERATIONS:
            gen = Generation(chat=path == "/v1/chat/completions", request=body)
        try:
            greq = generative_request(model, body) if path in GENERATIONS else None
            response = await core.forward(
                req,
                model,
                None,
                "",
                target_path=path,
                stream=stream,
                gen=gen,
                generative=greq,
                grant=grant,
            )
        except BaseException:
            if grant is not None:
                await core.token_budget.settle(grant.name, grant.tokens_per_minute, reserved, 0, 0)
            raise
        if grant is None:
            return response
        if isinstance(response, StreamResponse):
            response.chunks = self._settled(response.chunks, gen, grant, reserved)
        else:
            prompt, completion = usage_of(response)
            await core.token_budget.settle(
                grant.name, grant.tokens_per_minute, reserved, prompt, completion
            )
        return response

    async def _reserve_tokens(self, name: str, per_minute: float, tokens: int) -> Response | None:
        core = self.core
        if tokens > per_minute:
            return openai_error(
                429,
                f"the request may use {tokens} tokens, more than API key {name!r} may use in "
                f"a minute ({per_minute:g}); lower max_tokens",
            )
        wait = await core.token_budget.reserve(name, per_minute, tokens)
        if wait <= 0:
            return None
        core.counters["token_limited"] += 1
        refused = openai_error(429, f"API key {name!r} has used its tokens for this minute")
        refused.headers.append((b"retry-after", str(max(1, int(wait + 0.999))).encode()))
        return refused

    async def _settled(
        self,
        chunks: AsyncIterator[bytes],
        gen: Generation | None,
        grant: ApiKeyGrant,
        reserved: int,
    ) -> AsyncIterator[bytes]:
        """``chunks``, then the key's tokens settled with what the stream really used."""
        core = self.core
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            prompt = completion = 0
            if gen is not None and gen.prompt_ids is not None:
                prompt, completion = len(gen.prompt_ids), len(gen.sent_ids)
            elif gen is not None or reserved:
                prompt, completion = 0, reserved  # nothing known: keep the reservation
            await core.token_budget.settle(
                grant.name, grant.tokens_per_minute, reserved, prompt, completion
            )

    def model_list(self) -> Response:
        """The models that some routable worker of the fleet serves now."""
        core = self.core
        snap = core.store.current
        names: set[str] = set()
        if snap is not None:
            for region in snap.routable_regions():
                for w in region.workers:
                    if w.state.routable:
                        names.update(m.partition(":")[0] for m in w.models)
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "meridian"}
                for n in sorted(names)]  # fmt: skip
        return Response(200, orjson.dumps({"object": "list", "data": data}), JSON)

    # --- admission -------------------------------------------------------------------------

    def order(
        self,
        snap: RoutingSnapshot,
        route: RouteRequest,
        request: GenerativeRequest,
        ranked: list[str],
    ) -> tuple[list[str], dict[str, WorkerView]]:
        """The regions to try for a generative request, and the worker to try in each:
        the KV-aware policy's order (RTT + slot wait + uncached prefill + decode, prefix
        affinity under bounded load) over the regions the region policy let through."""
        core = self.core
        table = core.policy.table(snap, request.model)
        row = table.rtt_row(route)
        allowed = set(ranked)
        rtt = {name: float(row[i]) for name, i in table.index.items() if name in allowed}
        believed = core.kv_policy.affinity.matched_blocks(request.key) if request.key else {}
        workers = choose_generative(core.kv_policy, snap, request, rtt, core.outstanding)
        if workers:
            core.generation.routed(believed.get(workers[0].worker_id, 0) > 0)
        region_of = {w.worker_id: r.name for r in snap.regions for w in r.workers}
        picks: dict[str, WorkerView] = {}
        order: list[str] = []
        for w in workers:
            region = region_of.get(w.worker_id)
            if region is not None and region not in picks:
                picks[region] = w
                order.append(region)
        return order + [name for name in ranked if name not in picks], picks

    def relay(
        self,
        upstream: UpstreamStream,
        gen: Generation | None,
        region: str,
        worker_id: str,
        route: RouteRequest,
    ) -> AsyncIterator[bytes]:
        core = self.core
        idle = core.settings.stream_idle_timeout_s
        if gen is None:
            return relay_raw(upstream, idle)

        def failed(name: str) -> None:
            core.observed.error(name, time.monotonic())
            core.counters["stream_breaks"] += 1

        async def resume(body: bytes, tried: set[str]) -> tuple[UpstreamStream, str, str] | None:
            return await self._resume(route, body, tried)

        return relay_generation(upstream, gen, region, worker_id, idle, resume, failed)

    async def _resume(
        self, route: RouteRequest, body: bytes, tried: set[str]
    ) -> tuple[UpstreamStream, str, str] | None:
        """Continue a broken-off generation on the next-best worker not tried yet."""
        core = self.core
        snap = core.store.current
        if snap is None:
            return None
        snap = core.unmonitored.view(core.last_good.view(snap, route.model))
        s = core.settings
        headers = [(b"content-type", b"application/json"), (TOKEN_IDS_HEADER, b"1")]
        attempts = 0
        for name in core.rank(snap, route, time.monotonic()) or [
            r.name for r in snap.routable_regions() if r.serves(route.model)
        ]:
            region = snap.region(name)
            if region is None or attempts >= s.max_attempts:
                continue
            workers = [w for w in core.workers(snap, region, route.model)
                       if w.worker_id not in tried]  # fmt: skip
            worker = choose_worker(workers, core.rng, core.outstanding)
            if worker is None:
                continue
            attempts += 1
            tried.add(worker.worker_id)
            host, port = core.endpoint(worker.endpoint)
            now = time.monotonic()
            stall_from = core.lag.stalled_ms()
            try:
                opened = await core.pool.stream(
                    host, port, "POST", "/v1/completions", headers, body, s.attempt_timeout_s
                )
            except (UpstreamError, TimeoutError):
                core.observed.error(name, time.monotonic())
                continue
            if opened.status != 200 or EVENT_STREAM not in header_value(
                opened.headers, b"content-type"
            ):
                opened.close()
                core.observed.error(name, time.monotonic())
                continue
            took_ms = core.took_ms(now, stall_from, time.monotonic())
            excess_ms = core.excess_ms(took_ms, host, port, worker)
            core.observed.success(name, took_ms, excess_ms, time.monotonic())
            core.counters["stream_continued"] += 1
            return opened, name, worker.worker_id
        return None
