"""Admission under overload: admit what the fleet can serve in time, refuse the rest at once.

A request that cannot be served in time is better refused in microseconds (503 with
``Retry-After``, which clients and load balancers honour) than queued to time out: the
queue it would join delays everything admitted after it, and goodput (requests
completed within their deadline per second) collapses as the offered load grows past
capacity. This module is the one admission strategy: the router's core decides each
request with :meth:`Admission.decide`, and the fleet simulator decides a slice of
requests at once with :meth:`Admission.decide_batch`, both from the same
``AdmissionConfig`` and the same two rules, checked in this order:

- **capacity** (``FULL``): the fleet's load for the model has reached the request class's
  ceiling. ``interactive`` is admitted up to a short queue (``interactive_max_load``),
  ``batch`` only while the fleet has room (``batch_max_load``, lower), so batch traffic
  is shed first and interactive traffic keeps its latency. With ``hold_batch`` a batch
  request over its ceiling but under the interactive one is *held* (the router queues
  it, ``router.hold``) instead of refused.
- **deadline** (``LATE``): the best region's expected completion time (a policy whose
  costs are times, ``RoutingPolicy.expected_ms``) exceeds the share of the request's
  deadline its class may use (the rest covers the service time's spread and the queue's
  noise; 1: the whole deadline).

The load is a number the caller passes in. The router measures it with ``FleetLoad``
(below) from the routing snapshot and its own statistics; the simulator takes its
policy's queue model (``MeridianPolicy.fleet_load``: requests in the regions over their
servers, learned capacities). ``FleetLoad``::

    load = sum(held_r) / sum(capacity_rps_r * service_s_r)

- ``held_r``: the larger of what this router has outstanding in region r (fresh) and
  what the region last reported queued and in flight (other routers' requests too);
- ``capacity_rps_r``: the region's sustainable rate from the snapshot (its workers'
  measured capacity), and ``service_s_r`` the shorter of the router's EWMA of the
  region's attempt times and the workers' reported median latency (else a default): by
  Little's law their product is the concurrency the region serves without a queue. Both
  figures include some queueing once a queue forms, which makes the load read low: the
  estimate errs towards admitting, and the deadline rule refuses what then cannot
  finish in time.

At load 1 every worker is busy; above it requests wait.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from meridian.keyring import PRIORITIES, ApiKeyGrant, Priority
from meridian.snapshot import RoutingSnapshot
from router.policies import RouterStats

__all__ = [
    "ADMIT",
    "ADMITTED",
    "FULL",
    "LATE",
    "PRIORITY_HEADER",
    "Admission",
    "AdmissionConfig",
    "AdmissionCounts",
    "Decision",
    "FleetLoad",
    "Verdict",
    "implied_deadline_ms",
    "request_priority",
    "sequence_load",
]

PRIORITY_HEADER = b"x-meridian-priority"
# what the OpenAI client libraries send: the read timeout the client waits, in seconds
OPENAI_TIMEOUT_HEADER = b"x-stainless-read-timeout"

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

Verdict = Literal["admit", "hold", "refuse"]

# what ``Admission.decide_batch`` answers per request
ADMITTED, LATE, FULL = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""  # why it was not admitted: "capacity" or "deadline"
    message: str = ""  # for the client: what was full and how full, or what is too late
    retry_after_s: int = 0
    load: float = 0.0  # the fleet's load for the model when decided (NaN: unknown)


ADMIT = Decision("admit")


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """Per request class (``interactive`` is class 0, ``batch`` class 1; the simulator's
    classes past 1 count as batch)."""

    # a class is refused while the fleet's load is at or above its ceiling; 0 turns
    # the capacity rule off for that class
    interactive_max_load: float = 2.0
    batch_max_load: float = 1.0
    # a class is refused when the best region's expected completion time exceeds this
    # share of the request's deadline (1: the whole deadline)
    interactive_deadline_share: float = 1.0
    batch_deadline_share: float = 1.0
    # a batch request over its ceiling but under the interactive one is held, not refused
    hold_batch: bool = False
    default_service_ms: float = 50.0  # before anything was observed or reported
    max_retry_after_s: int = 30

    def __post_init__(self) -> None:
        if self.interactive_max_load < 0 or self.batch_max_load < 0:
            raise ValueError("a load ceiling cannot be negative (0: off)")
        for share in (self.interactive_deadline_share, self.batch_deadline_share):
            if not 0 < share <= 1:
                raise ValueError("every deadline share must be in (0, 1]")

    @staticmethod
    def class_of(priority: Priority | int) -> int:
        if isinstance(priority, str):
            return 1 if priority == "batch" else 0
        return 0 if priority <= 0 else 1

    def ceiling(self, priority: Priority | int) -> float:
        return (self.interactive_max_load, self.batch_max_load)[self.class_of(priority)]

    def share(self, priority: Priority | int) -> float:
        return (self.interactive_deadline_share, self.batch_deadline_share)[self.class_of(priority)]


@dataclass(frozen=True, slots=True)
class _Fleet:
    """What one snapshot says of one model, computed once per snapshot: per region that
    serves it, (name, capacity in requests/s, queued + in flight as last reported, the
    workers' median latency in ms or 0)."""

    names: tuple[str, ...]
    regions: tuple[tuple[float, float, float], ...]


class FleetLoad:
    """The router's estimate of a model's load: what the fleet holds over what it serves
    without queueing (see the module's text).

    A handful of regions per model: plain Python over them is faster than numpy's
    per-call overhead, and an estimate stays in the microseconds."""

    def __init__(self, default_service_ms: float = 50.0) -> None:
        self.default_service_ms = default_service_ms
        self._fleets: dict[str, _Fleet] = {}
        self._snap: RoutingSnapshot | None = None

    def _fleet(self, snap: RoutingSnapshot, model: str) -> _Fleet:
        if snap is not self._snap:
            self._fleets = {}
            self._snap = snap
        fleet = self._fleets.get(model)
        if fleet is None:
            names, figures = [], []
            for r in snap.routable_regions():
                if not r.serves(model):
                    continue
                latencies = [w.latency_p50_ms for w in r.workers if w.latency_p50_ms > 0]
                names.append(r.name)
                figures.append(
                    (
                        r.capacity_rps or sum(w.throughput_rps for w in r.workers),
                        float(r.queue_depth + r.in_flight),
                        sum(latencies) / len(latencies) if latencies else 0.0,
                    )
                )
            fleet = self._fleets[model] = _Fleet(tuple(names), tuple(figures))
        return fleet

    def measure(
        self, snap: RoutingSnapshot, stats: RouterStats, model: str, now: float
    ) -> tuple[float, float]:
        """(load, the longest service time in seconds) over the live regions serving
        ``model``; load is NaN when their capacity is unknown."""
        fleet = self._fleet(snap, model)
        if not fleet.names:
            return math.nan, 0.0
        idx = stats.indices(fleet.names)
        outstanding, observed, open_until = (
            stats.outstanding,
            stats.service_ms,
            stats.circuit_open_until,
        )
        default_ms = self.default_service_ms
        held = slots = longest_ms = 0.0
        for i, (capacity, reported_held, reported_ms) in zip(
            idx.tolist(), fleet.regions, strict=True
        ):
            if open_until[i] > now:
                continue  # ejected: neither its capacity nor its load count
            seen_ms = float(observed[i])
            if seen_ms > 0 and reported_ms > 0:
                service_ms = min(seen_ms, reported_ms)
            else:
                service_ms = seen_ms or reported_ms or default_ms
            slots += capacity * service_ms / 1000.0
            held += max(float(outstanding[i]), reported_held)
            longest_ms = max(longest_ms, service_ms)
        if slots <= 0.0:
            return math.nan, 0.0
        return held / slots, longest_ms / 1000.0


class Admission:
    """Admit, hold or refuse: the capacity rule, then the deadline rule (module text)."""

    def __init__(self, config: AdmissionConfig | None = None) -> None:
        self.config = config or AdmissionConfig()
        self.fleet = FleetLoad(self.config.default_service_ms)
        c = self.config
        self._ceilings = np.array([c.interactive_max_load, c.batch_max_load])
        self._shares = np.array([c.interactive_deadline_share, c.batch_deadline_share])

    def load(self, snap: RoutingSnapshot, stats: RouterStats, model: str, now: float) -> float:
        """The fleet's load for ``model`` as the router measures it (NaN: unknown)."""
        return self.fleet.measure(snap, stats, model, now)[0]

    # --- one request ---------------------------------------------------------------------

    def by_load(
        self, load: float, service_s: float, model: str, priority: Priority | int
    ) -> Decision:
        """The capacity rule alone: ``FULL`` as a refusal (or a hold), else ``ADMIT``."""
        c = self.config
        ceiling = c.ceiling(priority)
        if ceiling <= 0 or not load >= ceiling:  # off, below, or unknown (NaN)
            return ADMIT
        # the excess drains at the fleet's rate: about (load - ceiling) service times
        drain_s = (load - ceiling + 1.0) * service_s
        retry = min(c.max_retry_after_s, max(1, math.ceil(drain_s)))
        name = ("interactive", "batch")[c.class_of(priority)]
        if c.hold_batch and name == "batch":
            top = c.interactive_max_load
            if top <= 0 or load < top:
                message = f"model '{model}' is at {load:.2f}x: batch waits below {ceiling:g}x"
                return Decision("hold", "capacity", message, retry, load)
        return Decision(
            "refuse",
            "capacity",
            f"model '{model}' is at capacity: its regions hold {load:.2f}x what they serve "
            f"without queueing, and {name} requests are admitted below {ceiling:g}x; "
            f"retry after {retry} s",
            retry,
            load,
        )

    def by_deadline(
        self,
        expected_ms: float | None,
        deadline_ms: float | None,
        priority: Priority | int,
        model: str = "",
        best: str = "",
    ) -> Decision:
        """The deadline rule alone: ``LATE`` as a refusal, else ``ADMIT``."""
        if expected_ms is None or deadline_ms is None:
            return ADMIT
        share = self.config.share(priority)
        allowed = share * deadline_ms
        if expected_ms <= allowed:
            return ADMIT
        retry = min(
            self.config.max_retry_after_s, max(1, math.ceil((expected_ms - allowed) / 1000.0))
        )
        part = "" if share >= 1 else f" ({share:g} of it for this class)"
        return Decision(
            "refuse",
            "deadline",
            f"deadline of {deadline_ms:g} ms{part} cannot be met: the best region ({best}) is "
            f"expected to take {expected_ms:.0f} ms for model '{model}'",
            retry,
        )

    def decide(
        self,
        snap: RoutingSnapshot,
        stats: RouterStats,
        model: str,
        priority: Priority,
        now: float,
        *,
        deadline_ms: float | None = None,
        expected_ms: Callable[[], float | None] | None = None,
        best: str = "",
    ) -> Decision:
        """The router's decision for one request: its fleet load from ``FleetLoad``, and
        (only when that admits and the request has a deadline) ``expected_ms()``, the
        best region's expected completion time."""
        load, service_s = self.fleet.measure(snap, stats, model, now)
        decision = self.by_load(load, service_s, model, priority)
        if decision.verdict != "admit" or deadline_ms is None or expected_ms is None:
            return decision
        return self.by_deadline(expected_ms(), deadline_ms, priority, model, best)

    # --- many requests at once (the simulator) -----------------------------------------------

    def decide_batch(
        self,
        expected_ms: FloatArray | None,
        deadline_ms: FloatArray,
        classes: IntArray,
        load: float | None = None,
    ) -> IntArray:
        """``ADMITTED``, ``LATE`` or ``FULL`` per request, by the same rules as
        :meth:`by_load` and :meth:`by_deadline` (one fleet load for all of them; None:
        unknown, not checked). Holding is the router's: here a hold is ``FULL``."""
        c = np.where(np.asarray(classes) <= 0, 0, 1)
        out: IntArray = np.zeros(len(c), dtype=np.int64)
        if expected_ms is not None:
            out[expected_ms > self._shares[c] * deadline_ms] = LATE
        if load is not None:
            ceiling = self._ceilings[c]
            out[(ceiling > 0) & (load >= ceiling)] = FULL
        return out


class AdmissionCounts:
    """Requests refused (or held) by reason and class, for the router's metrics."""

    def __init__(self) -> None:
        self.refused: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.admitted: dict[str, int] = dict.fromkeys(PRIORITIES, 0)

    def count(self, decision: Decision, priority: Priority) -> None:
        if decision.verdict == "admit":
            self.admitted[priority] += 1
        elif decision.verdict == "refuse":
            self.refused[(decision.reason, priority)] += 1


def request_priority(grant: ApiKeyGrant | None, header: bytes | None) -> Priority:
    """The request's class: its key's, lowered (never raised) by ``x-meridian-priority``."""
    base: Priority = grant.priority if grant is not None else "interactive"
    if header is not None and header.strip().lower() == b"batch":
        return "batch"
    return base


def implied_deadline_ms(
    grant: ApiKeyGrant | None, openai_timeout: bytes | None = None
) -> float | None:
    """The deadline of a request that sent no ``x-meridian-deadline-ms``: its key's default,
    or the time an OpenAI client waits for the answer (``x-stainless-read-timeout``, in
    seconds, sent by the official client libraries) when that is shorter. The caller passes
    that header only for unstreamed requests: for a stream it bounds the wait between
    chunks, not the whole answer."""
    deadline = grant.deadline_ms if grant is not None else None
    if openai_timeout is not None:
        try:
            seconds = float(openai_timeout)
        except ValueError:
            seconds = math.nan  # not ours to refuse: the header is only a hint
        if math.isfinite(seconds) and 0 < seconds <= 86_400:
            ms = seconds * 1000.0
            deadline = ms if deadline is None else min(deadline, ms)
    return deadline


def sequence_load(snap: RoutingSnapshot, model: str, max_seqs: int) -> tuple[float, float]:
    """A generative model's load as its workers report it: (sequences they hold, running
    and waiting; the sequence slots they have, ``max_seqs`` each) over the routable
    regions that serve ``model``. Their ratio is the load ``Admission.by_load`` compares
    with a class's ceiling: at 1 every slot is taken and new sequences wait for one."""
    held = 0.0
    workers = 0
    prefix = model + ":"
    for r in snap.routable_regions():
        for w in r.workers:
            if w.state.routable and any(m == model or m.startswith(prefix) for m in w.models):
                workers += 1
                held += w.running_seqs + w.waiting_seqs
    return held, float(workers * max_seqs)
