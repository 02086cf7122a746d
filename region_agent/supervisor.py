"""Worker supervision: carry out directives and scrape the workers' stats.

:class:`WorkerSupervisor` is the seam; :class:`LocalProcessSupervisor` runs each
worker as a local process (by default ``python3 -m meridian worker ...``, the
command is a template), restarts it with backoff when it exits, drains and stops
the ones no longer wanted, and scrapes each one's JSON stats over HTTP (``/v2/stats`` by
default). The stats JSON it understands (missing fields take defaults)::

    {"ready": true, "models": ["name:version"], "queue_depth": 0, "in_flight": 0,
     "throughput_rps": 0.0, "capacity_rps": 0.0, "latency_p50_ms": 0.0,
     "latency_p99_ms": 0.0}

A worker's stderr passes through the supervisor (relayed to the agent's own
stderr) so that, when the worker exits on its own with a non-zero status, the
last line it wrote -- the reason, e.g. a model refused at load because it failed
its accuracy probes -- becomes the ``error`` of its status, reported to the
control plane until the worker is ready again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import httpx

from meridian.background import cancel_and_wait
from meridian.eventwait import wait_event
from meridian.net import free_port
from region_agent.worker_record import (
    AdoptedProcess,
    load_record,
    process_start_ticks,
    save_record,
)

__all__ = [
    "DEFAULT_WORKER_COMMAND",
    "LocalProcessSupervisor",
    "WorkerSpec",
    "WorkerStat",
    "WorkerSupervisor",
]

log = logging.getLogger(__name__)

DEFAULT_WORKER_COMMAND: tuple[str, ...] = (
    sys.executable, "-m", "meridian", "worker",
    "--host", "{host}", "--http-port", "{port}", "--grpc-port", "{grpc_port}",
    "--model", "{model}:{version}:{variant}={artifact_url}#sha256={artifact_sha256}",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One desired model deployment in this region."""

    model: str
    version: str
    variant: str = ""
    artifact_url: str = ""
    artifact_sha256: str = ""
    replicas: int = 1
    # a brownout reserve (a deployment's degrade_to variant): labelled
    # "model:version:variant" so that routers send it only a saturated region's overflow
    reserve: bool = False

    @property
    def label(self) -> str:
        """The model key the worker is reported under."""
        if self.reserve and self.variant:
            return f"{self.model}:{self.version}:{self.variant}"
        return f"{self.model}:{self.version}"


@dataclass(frozen=True, slots=True)
class WorkerStat:
    worker_id: str
    endpoint: str
    grpc_endpoint: str = ""
    models: tuple[str, ...] = ()
    ready: bool = False
    queue_depth: int = 0
    in_flight: int = 0
    throughput_rps: float = 0.0
    capacity_rps: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    gpu_indices: tuple[int, ...] = ()
    draining: bool = False  # being removed: reported so that routing stops sending to it
    error: str = ""  # why the worker last exited, until it is ready again
    # generative models: sequences, KV cache and token rates (zero for other models)
    running_seqs: int = 0
    waiting_seqs: int = 0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0
    kv_block_size: int = 0
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    prefix_hit_rate: float = 0.0


class WorkerSupervisor(Protocol):
    async def start(self) -> None: ...
    async def apply(self, desired: Sequence[WorkerSpec]) -> None: ...
    def statuses(self) -> list[WorkerStat]: ...
    async def close(self) -> None: ...


def _identity(spec: WorkerSpec) -> WorkerSpec:
    """What makes a worker process what it is: not its replica count, not the URL."""
    return replace(spec, replicas=0, artifact_url="")


@dataclass
class _Slot:
    worker_id: str
    spec: WorkerSpec
    port: int
    grpc_port: int
    gpus: tuple[int, ...]
    process: asyncio.subprocess.Process | AdoptedProcess | None = None
    start_ticks: int = 0  # the process's start time (/proc), which tells it from a recycled pid
    restarts: int = 0
    next_start: float = 0.0  # monotonic
    stat: WorkerStat | None = None
    started_at: float = 0.0
    stopping: bool = False
    draining_since: float | None = None  # monotonic; set when no longer wanted
    # the worker that replaces this one (another artifact): this one serves until that one
    # is ready (make before break), then drains
    successor: str = ""
    replaced_at: float = 0.0  # monotonic
    scraped_at: float = 0.0  # monotonic time of the last successful scrape
    waiter: asyncio.Task[None] | None = field(default=None, repr=False)
    relay: asyncio.Task[None] | None = field(default=None, repr=False)  # its stderr
    stderr_tail: deque[bytes] = field(default_factory=lambda: deque(maxlen=32), repr=False)
    error: str = ""


class LocalProcessSupervisor:
    def __init__(
        self,
        *,
        command: Sequence[str] = DEFAULT_WORKER_COMMAND,
        host: str = "127.0.0.1",
        scrape_path: str = "/v2/stats",
        scrape_interval_s: float = 0.5,
        gpu_count: int = 0,
        env: Mapping[str, str] | None = None,
        port_allocator: Callable[[], int] | None = None,
        stop_timeout_s: float = 5.0,
        max_backoff_s: float = 30.0,
        drain_min_s: float = 3.0,
        drain_grace_s: float = 30.0,
        replace_wait_s: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
        id_prefix: str = "",
        state_dir: Path | None = None,
        scheme: str = "http",  # "https": workers serve TLS (region_agent.tls.WorkerFiles)
    ) -> None:
        """``id_prefix`` goes before every worker id (a region agent passes its region's
        name, so that ids are unique across the fleet: routers key workers by id)."""
        self._scheme = scheme
        self._command = tuple(command)
        self._id_prefix = id_prefix
        self._host = host
        self._scrape_path = scrape_path
        self._interval = scrape_interval_s
        self._gpu_count = gpu_count
        self._env = dict(env or {})
        self._ports = port_allocator or (lambda: free_port(host))
        self._stop_timeout = stop_timeout_s
        self._max_backoff = max_backoff_s
        # a worker no longer wanted is reported draining for at least drain_min_s (so the
        # routing snapshot drops it and routers stop sending), then stopped once a scrape
        # shows it idle, or after drain_grace_s whatever it holds
        self._drain_min = drain_min_s
        self._drain_grace = drain_grace_s
        # a replaced worker drains once its successor is ready, or after this long whatever
        self._replace_wait = replace_wait_s
        self._replacements = 0
        self._transport = transport
        self._slots: dict[str, _Slot] = {}
        self._next_gpu = 0
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        # where the workers are recorded, for the agent's next life to adopt or stop them
        self._state_dir = state_dir
        self._saved = b""

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=2.0, transport=self._transport)
        if self._state_dir is not None:
            await self._adopt()
        self._task = asyncio.create_task(self._loop(), name="worker-supervisor")

    async def close(self) -> None:
        """Stop supervising and stop every worker process."""
        await cancel_and_wait(self._task)
        self._task = None
        await asyncio.gather(*(self._stop(slot) for slot in self._slots.values()))
        self._slots.clear()
        self._save()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _replace(self, old: _Slot, now: float) -> None:
        """Another artifact for ``old``'s place: a serving process keeps serving, under
        another id, until the new one is ready; one not serving is stopped at once."""
        serving = old.process is not None and old.stat is not None and old.stat.ready
        if not serving or old.draining_since is not None:
            await self._stop(old)
            return
        self._replacements += 1
        successor, old.worker_id = old.worker_id, f"{old.worker_id}~{self._replacements}"
        old.successor, old.replaced_at = successor, now
        self._slots[old.worker_id] = old
        log.info("replacing worker %s: %s serves until the new one is ready", successor,
                 old.worker_id)  # fmt: skip

    def abandon(self) -> None:
        """Stop supervising and leave the workers running, recorded (as a crash would)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # --- directives ------------------------------------------------------------------------

    async def apply(self, desired: Sequence[WorkerSpec]) -> None:
        wanted: dict[str, WorkerSpec] = {}
        for spec in desired:
            base = f"{self._id_prefix}{spec.model}-{spec.version}-{spec.variant or 'base'}"
            if spec.reserve:
                base += "-reserve"
            for i in range(spec.replicas):
                wanted[f"{base}-{i}"] = spec
        now = time.monotonic()
        for worker_id in [w for w in self._slots if w not in wanted]:
            slot = self._slots[worker_id]
            if slot.successor in wanted and slot.draining_since is None:
                continue  # serves until its successor is ready
            serving = slot.process is not None and slot.stat is not None and slot.stat.ready
            if not serving:  # nothing to drain: it never took traffic
                await self._stop(self._slots.pop(worker_id))
            elif slot.draining_since is None:
                slot.draining_since = now
                log.info("draining worker %s", worker_id)
        for worker_id, spec in wanted.items():
            current = self._slots.get(worker_id)
            # the same artifact (by digest) may come from another replica's URL after a
            # control-plane failover: only a different artifact replaces the process
            if current is not None and _identity(current.spec) != _identity(spec):
                await self._replace(self._slots.pop(worker_id), now)
                current = None
            if current is not None:
                current.spec = spec  # the replica count alone changed: keep the process
            if current is not None and current.draining_since is not None:
                current.draining_since = None  # wanted again before it stopped
                log.info("worker %s is wanted again; no longer draining", worker_id)
            if current is None:
                self._slots[worker_id] = _Slot(
                    worker_id, spec, self._ports(), self._ports(), self._assign_gpu()
                )
        self._wake.set()

    # --- the record of the workers, and adopting them ---------------------------------------

    async def _adopt(self) -> None:
        """Adopt the recorded workers that still run and answer; stop the ones that do not.
        The first directives then keep or drain them like any other worker."""
        assert self._state_dir is not None and self._client is not None
        for entry in load_record(self._state_dir):
            try:
                worker_id, pid, ticks = (
                    str(entry["worker_id"]),
                    int(entry["pid"]),
                    int(entry["ticks"]),
                )
                spec = WorkerSpec(**entry["spec"])
                slot = _Slot(worker_id, spec, int(entry["port"]), int(entry["grpc_port"]),
                             tuple(int(g) for g in entry.get("gpus", ())))  # fmt: skip
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring a bad worker record entry %r: %s", entry, exc)
                continue
            if process_start_ticks(pid) != ticks:
                continue  # gone (or the pid is another process now)
            slot.process, slot.start_ticks = AdoptedProcess(pid, ticks), ticks
            slot.started_at = time.monotonic()
            await self._scrape(slot)
            if worker_id in self._slots or slot.stat is None or not slot.stat.ready:
                why = "a duplicate" if worker_id in self._slots else "not answering"
                log.warning(
                    "stopping worker %s (pid %d) of an earlier life: %s", worker_id, pid, why
                )
                await self._stop(slot)
                continue
            self._slots[worker_id] = slot
            self._next_gpu += len(slot.gpus)
            log.info("adopted worker %s (pid %d, port %d)", worker_id, pid, slot.port)
        self._save()

    def _save(self) -> None:
        if self._state_dir is None:
            return
        workers = [
            {
                "worker_id": slot.worker_id,
                "pid": slot.process.pid,
                "ticks": slot.start_ticks,
                "port": slot.port,
                "grpc_port": slot.grpc_port,
                "gpus": list(slot.gpus),
                "spec": asdict(slot.spec),
            }
            for slot in self._slots.values()
            if slot.process is not None and slot.process.returncode is None
        ]
        body = json.dumps(workers, sort_keys=True).encode()
        if body != self._saved:
            try:
                save_record(self._state_dir, workers)
                self._saved = body
            except OSError as exc:
                log.error("cannot record the workers in %s: %s", self._state_dir, exc)

    def _assign_gpu(self) -> tuple[int, ...]:
        if self._gpu_count <= 0:
            return ()
        gpu = self._next_gpu % self._gpu_count
        self._next_gpu += 1
        return (gpu,)

    def statuses(self) -> list[WorkerStat]:
        out = []
        for slot in self._slots.values():
            if slot.stat is not None:
                draining = slot.draining_since is not None
                out.append(replace(slot.stat, draining=True) if draining else slot.stat)
            else:
                out.append(
                    WorkerStat(
                        worker_id=slot.worker_id,
                        endpoint=self._endpoint(slot),
                        grpc_endpoint=f"{self._host}:{slot.grpc_port}",
                        gpu_indices=slot.gpus,
                        error=slot.error,
                    )
                )
        return out

    def pid(self, worker_id: str) -> int | None:
        slot = self._slots.get(worker_id)
        return slot.process.pid if slot and slot.process else None

    def restarts(self, worker_id: str) -> int:
        slot = self._slots.get(worker_id)
        return slot.restarts if slot else 0

    # --- processes -------------------------------------------------------------------------

    def _endpoint(self, slot: _Slot) -> str:
        return f"{self._scheme}://{self._host}:{slot.port}"

    async def _launch(self, slot: _Slot) -> None:
        values = {
            "host": self._host,
            "port": str(slot.port),
            "grpc_port": str(slot.grpc_port),
            "model": slot.spec.model,
            "version": slot.spec.version,
            "variant": slot.spec.variant,
            "artifact_url": slot.spec.artifact_url,
            "artifact_sha256": slot.spec.artifact_sha256,
            "worker_id": slot.worker_id,
            "gpu": ",".join(str(g) for g in slot.gpus),
        }
        argv = [part.format(**values) for part in self._command]
        env = {**os.environ, **self._env, "MERIDIAN_WORKER_ID": slot.worker_id}
        if slot.gpus:
            env["CUDA_VISIBLE_DEVICES"] = values["gpu"]
        slot.process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        slot.started_at = time.monotonic()
        slot.start_ticks = process_start_ticks(slot.process.pid) or 0
        self._save()
        slot.stat = None
        slot.stderr_tail.clear()
        assert slot.process.stderr is not None
        slot.relay = asyncio.create_task(
            _relay(slot.process.stderr, slot.stderr_tail), name=f"stderr-{slot.worker_id}"
        )
        log.info("started worker %s (pid %d)", slot.worker_id, slot.process.pid)

    async def _stop(self, slot: _Slot) -> None:
        slot.stopping = True
        process = slot.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(self._stop_timeout):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        await self._end_relay(slot)

    @staticmethod
    async def _end_relay(slot: _Slot) -> None:
        """Wait (briefly) for the exited worker's last stderr bytes to be relayed."""
        relay, slot.relay = slot.relay, None
        if relay is None:
            return
        try:
            async with asyncio.timeout(2.0):
                await relay
        except TimeoutError:  # a grandchild holds the pipe open: stop reading it
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay

    async def _loop(self) -> None:
        while True:
            now = time.monotonic()
            for slot in list(self._slots.values()):
                process = slot.process
                if process is not None and process.returncode is not None and not slot.stopping:
                    if now - slot.started_at > 60:
                        slot.restarts = 0  # it ran well for a while: forget old crashes
                    slot.restarts += 1
                    delay = min(self._max_backoff, 0.5 * 2 ** (slot.restarts - 1))
                    await self._end_relay(slot)
                    # a worker that exits by itself says why last; one killed by a signal did not
                    reason = _last_line(slot.stderr_tail) if process.returncode > 0 else ""
                    slot.error = f"exited with {process.returncode}" + (
                        f": {reason}" if reason else ""
                    )
                    log.warning(
                        "worker %s %s; restarting in %.1fs", slot.worker_id, slot.error, delay
                    )
                    slot.process = None
                    slot.stat = None
                    slot.next_start = now + delay
                if slot.draining_since is not None and slot.process is None:
                    self._slots.pop(slot.worker_id, None)  # it exited while draining: done
                    continue
                if slot.process is None and not slot.stopping and now >= slot.next_start:
                    try:
                        await self._launch(slot)
                    except OSError as exc:
                        log.error("cannot start worker %s: %s", slot.worker_id, exc)
                        slot.restarts += 1
                        slot.next_start = now + min(self._max_backoff, 2.0**slot.restarts)
            await self._scrape_all()
            await self._finish_drains()
            self._save()
            self._wake.clear()
            await wait_event(self._wake, self._interval)

    async def _finish_drains(self) -> None:
        now = time.monotonic()
        for slot in list(self._slots.values()):
            if slot.successor and slot.draining_since is None:
                new = self._slots.get(slot.successor)
                ready = new is None or (new.stat is not None and new.stat.ready)
                if ready or now - slot.replaced_at >= self._replace_wait:
                    slot.draining_since = now
                    log.info("draining worker %s: its successor %s is %s", slot.worker_id,
                             slot.successor, "ready" if ready else "not ready in time")  # fmt: skip
            since = slot.draining_since
            if since is None:
                continue
            stat = slot.stat
            idle = (
                stat is not None
                and slot.scraped_at >= since + self._drain_min
                and stat.in_flight == 0
                and stat.queue_depth == 0
            )
            if idle or now - since >= self._drain_grace:
                log.info(
                    "stopping drained worker %s after %.1fs%s", slot.worker_id, now - since,
                    "" if idle else " (grace period over)",
                )  # fmt: skip
                await self._stop(slot)
                if slot.draining_since is None:  # wanted again while it stopped: start anew
                    slot.stopping, slot.process, slot.stat = False, None, None
                else:
                    self._slots.pop(slot.worker_id, None)

    async def _scrape_all(self) -> None:
        running = [s for s in self._slots.values() if s.process and s.process.returncode is None]
        await asyncio.gather(*(self._scrape(s) for s in running))

    async def _scrape(self, slot: _Slot) -> None:
        assert self._client is not None
        base = WorkerStat(
            worker_id=slot.worker_id,
            endpoint=self._endpoint(slot),
            grpc_endpoint=f"{self._host}:{slot.grpc_port}",
            gpu_indices=slot.gpus,
            models=(slot.spec.label,),
            error=slot.error,
        )
        try:
            response = await self._client.get(self._endpoint(slot) + self._scrape_path)
            data: Any = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            data = None
        if not isinstance(data, dict):
            slot.stat = replace(base, ready=False)
            return
        slot.scraped_at = time.monotonic()
        ready = bool(data.get("ready", True))
        if ready:
            slot.error = ""  # it serves again: an earlier failure is history
        slot.stat = replace(
            base,
            error=slot.error,
            ready=ready,
            # a reserve's label says it is one, whatever the worker calls its model
            models=base.models
            if slot.spec.reserve
            else tuple(str(m) for m in data.get("models", base.models)),
            queue_depth=_int(data.get("queue_depth")),
            in_flight=_int(data.get("in_flight")),
            throughput_rps=_float(data.get("throughput_rps")),
            capacity_rps=_float(data.get("capacity_rps")),
            latency_p50_ms=_float(data.get("latency_p50_ms")),
            latency_p99_ms=_float(data.get("latency_p99_ms")),
            running_seqs=_int(data.get("running")),
            waiting_seqs=_int(data.get("waiting")),
            kv_blocks_used=_int(data.get("kv_blocks_used")),
            kv_blocks_free=_int(data.get("kv_blocks_free")),
            kv_block_size=_int(data.get("kv_block_size")),
            prefill_tokens_per_s=_float(data.get("prefill_tokens_per_s")),
            decode_tokens_per_s=_float(data.get("decode_tokens_per_s")),
            prefix_hit_rate=_float(data.get("prefix_hit_rate")),
        )


MAX_ERROR_CHARS = 1000


async def _relay(stream: asyncio.StreamReader, tail: deque[bytes]) -> None:
    """Copy a worker's stderr to ours, keeping its last chunks for :func:`_last_line`."""
    while chunk := await stream.read(1 << 16):
        with contextlib.suppress(OSError):
            os.write(2, chunk)
        tail.append(chunk)


def _last_line(tail: deque[bytes]) -> str:
    """The last non-blank line of what a worker wrote, at most MAX_ERROR_CHARS."""
    text = b"".join(tail)[-(1 << 16) :].decode("utf-8", errors="replace")
    for line in reversed(text.splitlines()):
        if line.strip():
            line = line.strip()
            return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."
    return ""


def _int(value: object) -> int:
    try:
        return max(0, int(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def _float(value: object) -> float:
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return result if result >= 0 and result == result and result != float("inf") else 0.0
