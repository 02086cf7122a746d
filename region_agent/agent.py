"""The region agent: streams GPU and worker health to the control plane, runs its directives.

It connects to any of several control-plane addresses (rotating on failure),
reconnects with exponential backoff and full jitter, sends its latest state at
once on every reconnect, and keeps its workers running while the control
plane is away: directives only change what runs when a new decision arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Sequence

import grpc

from meridian.eventwait import wait_event
from proto import region_pb2 as pb
from proto import region_pb2_grpc as pb_grpc
from region_agent.gpus import GpuSample, GpuSource
from region_agent.supervisor import WorkerSpec, WorkerStat, WorkerSupervisor
from region_agent.tls import AgentCertificate, AgentTLS, open_channel  # mutual TLS

__all__ = ["AGENT_VERSION", "RegionAgent", "build_report"]

AGENT_VERSION = "0.1.0"
log = logging.getLogger(__name__)
_Call = grpc.aio.StreamStreamCall[pb.AgentMessage, pb.ControlMessage]


def build_report(seq: int, gpus: Sequence[GpuSample], workers: Sequence[WorkerStat]) -> pb.Report:
    report = pb.Report(seq=seq, sent_at=time.time())
    for g in gpus:
        report.gpus.append(
            pb.GpuStatus(
                index=g.index,
                utilization=g.utilization,
                memory_used_bytes=g.memory_used_bytes,
                memory_total_bytes=g.memory_total_bytes,
                temperature_c=g.temperature_c,
                power_w=g.power_w,
                ecc_corrected=g.ecc_corrected,
                ecc_uncorrected=g.ecc_uncorrected,
                xid_events=[pb.XidEvent(code=x.code, at=x.at) for x in g.xid_events],
                throttle_reasons=g.throttle_reasons,
                hung=g.hung,
                recent_xids=g.recent_xids,
            )
        )
    for w in workers:
        report.workers.append(
            pb.WorkerStatus(
                worker_id=w.worker_id,
                endpoint=w.endpoint,
                grpc_endpoint=w.grpc_endpoint,
                models=w.models,
                ready=w.ready,
                queue_depth=w.queue_depth,
                in_flight=w.in_flight,
                throughput_rps=w.throughput_rps,
                capacity_rps=w.capacity_rps,
                latency_p50_ms=w.latency_p50_ms,
                latency_p99_ms=w.latency_p99_ms,
                gpu_indices=w.gpu_indices,
                draining=w.draining,
                error=w.error,
                running_seqs=w.running_seqs,
                waiting_seqs=w.waiting_seqs,
                kv_blocks_used=w.kv_blocks_used,
                kv_blocks_free=w.kv_blocks_free,
                kv_block_size=w.kv_block_size,
                prefill_tokens_per_s=w.prefill_tokens_per_s,
                decode_tokens_per_s=w.decode_tokens_per_s,
                prefix_hit_rate=w.prefix_hit_rate,
            )
        )
    return report


class RegionAgent:
    def __init__(
        self,
        addresses: Sequence[str],
        *,
        region: str,
        credential: str,
        gpus: GpuSource,
        supervisor: WorkerSupervisor,
        report_interval_s: float = 1.0,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 5.0,
        rng: random.Random | None = None,
        tls: AgentTLS | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("at least one control-plane address is required")
        self.addresses = list(addresses)
        self.region = region
        self._credential = credential
        self._gpus = gpus
        self._supervisor = supervisor
        self.report_interval_s = report_interval_s
        self._backoff_base = backoff_base_s
        self._backoff_cap = backoff_cap_s
        self._rng = rng or random.Random()
        self.agent_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.connected = asyncio.Event()
        self.connected_to: str | None = None
        self.last_error: str = ""
        self.last_error_code: grpc.StatusCode | None = None
        self.directives_generation = 0
        self.sessions = 0
        self.reports_sent = 0
        self._seq = 0
        self._send_now = asyncio.Event()
        # mutual TLS: the certificate enrolled with the credential (None: plaintext)
        self.certificate = None if tls is None else AgentCertificate(tls, region, credential)

    def report_now(self) -> None:
        """Send a report at once instead of at the next interval (e.g. after a fault)."""
        self._send_now.set()

    def backoff_delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return self._rng.uniform(0, min(self._backoff_cap, self._backoff_base * 2**attempt))

    async def run(self) -> None:
        """Connect, stream, reconnect; until cancelled. Workers keep running throughout."""
        attempt = 0
        index = 0
        while True:
            address = self.addresses[index % len(self.addresses)]
            started = time.monotonic()
            try:
                await self._session(address)
                self.last_error = "the control plane closed the stream"
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.last_error_code = exc.code()
                self.last_error = f"{exc.code().name}: {exc.details()}"
                if exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    log.error("control plane at %s refused this agent: %s", address, exc.details())
                else:
                    log.warning("stream to %s ended: %s", address, self.last_error)
            except Exception as exc:
                self.last_error = repr(exc)
                log.warning("stream to %s failed: %r", address, exc)
            finally:
                self.connected.clear()
                self.connected_to = None
            if time.monotonic() - started > 10 * self.report_interval_s:
                attempt = 0  # the session was healthy for a while: start backing off afresh
            index += 1
            delay = self.backoff_delay(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def _session(self, address: str) -> None:
        if self.certificate is not None:
            await self.certificate.ensure()
        async with open_channel(address, self.certificate) as channel:
            stub = pb_grpc.RegionServiceStub(channel)
            call = stub.Connect()
            register = pb.Register(
                region=self.region,
                credential=self._credential,
                agent_version=AGENT_VERSION,
                agent_id=self.agent_id,
                gpus=[
                    pb.GpuInfo(
                        index=g.index,
                        uuid=g.uuid,
                        name=g.name,
                        memory_total_bytes=g.memory_total_bytes,
                    )
                    for g in self._gpus.inventory()
                ],
            )
            await call.write(pb.AgentMessage(register=register))
            welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            reader = asyncio.create_task(self._read(call, welcomed))
            sender: asyncio.Task[None] | None = None
            renewer: asyncio.Task[None] | None = None
            try:
                # the control plane answers a good register with directives, a bad one with
                # an error status: wait for one or the other
                await asyncio.wait({reader, welcomed}, return_when=asyncio.FIRST_COMPLETED)
                if not welcomed.done():
                    reader.result()
                    return
                self.sessions += 1
                self.connected_to = address
                self.connected.set()
                sender = asyncio.create_task(self._send(call))
                if self.certificate is not None:  # renews in place; the stream goes on
                    renewer = asyncio.create_task(self.certificate.renew_forever())
                done, _ = await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    finished.result()  # re-raise the stream's error
            finally:
                for task in (reader, sender, renewer):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                call.cancel()

    async def _read(self, call: _Call, welcomed: asyncio.Future[None]) -> None:
        async for message in call:
            if message.WhichOneof("body") == "directives":
                await self._apply(message.directives)
            if not welcomed.done():
                welcomed.set_result(None)

    async def _apply(self, directives: pb.Directives) -> None:
        if directives.report_interval_s > 0:
            self.report_interval_s = directives.report_interval_s
        if directives.generation == 0 or directives.generation == self.directives_generation:
            return  # nothing decided yet, or nothing new: keep what runs
        specs = [
            WorkerSpec(
                model=w.model,
                version=w.version,
                variant=w.variant,
                artifact_url=w.artifact_url,
                artifact_sha256=w.artifact_sha256,
                replicas=w.replicas,
                reserve=w.reserve,
            )
            for w in directives.workers
        ]
        await self._supervisor.apply(specs)
        self.directives_generation = directives.generation
        log.info(
            "applied directives generation %x: %d deployments", directives.generation, len(specs)
        )

    async def _send(self, call: _Call) -> None:
        while True:  # the first report goes at once: the latest state after a reconnect
            self._seq += 1
            report = build_report(self._seq, self._gpus.sample(), self._supervisor.statuses())
            await call.write(pb.AgentMessage(report=report))
            self.reports_sent += 1
            self._send_now.clear()
            await wait_event(self._send_now, self.report_interval_s)
