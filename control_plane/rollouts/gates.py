"""The gates of a canary step: pure functions over one region's window of figures.

:func:`judge` compares the new version's figures in a region over the step's window
with the old version's in the same region and window (or, once the old version serves
too little there, with its figures from the region's last window that had enough),
and says ``fail`` as soon as there are enough samples to tell, ``pass`` once the step
has baked and every gate holds, ``wait`` otherwise. Every verdict carries its figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from control_plane.rollouts.schemas import GateConfig
from meridian.figures import VersionFigures

__all__ = ["RegionWindow", "Verdict", "judge"]


@dataclass(frozen=True, slots=True)
class RegionWindow:
    region: str
    new: VersionFigures
    old: VersionFigures
    elapsed_s: float
    share: float  # the new version's share of the region's traffic in this step
    reference: VersionFigures | None = None  # the old version's last window with enough
    compare: str = "none"  # cosine | disagreement | none


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Literal["pass", "fail", "wait"]
    reasons: tuple[str, ...]
    figures: dict[str, Any] = field(default_factory=dict)


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def _limit(old: float | None, ratio: float, slack: float, absolute: float | None) -> float | None:
    limits = []
    if old is not None:
        limits.append(max(old * ratio, old + slack))
    if absolute is not None:
        limits.append(absolute)
    return min(limits) if limits else None


def judge(gates: GateConfig, w: RegionWindow, bake_s: float) -> Verdict:
    old = w.old if w.old.requests >= gates.min_requests else w.reference
    new = w.new
    figures: dict[str, Any] = {
        "share": w.share,
        "elapsed_s": round(w.elapsed_s, 2),
        "new_requests": new.requests,
        "new_errors": new.errors,
        "new_error_rate": _r(new.error_rate),
        "new_p99_ms": new.p99_ms(),
        "old_requests": w.old.requests,
        "old_error_rate": _r(old.error_rate) if old else None,
        "old_p99_ms": old.p99_ms() if old else None,
        "old_from": "window" if old is w.old else ("earlier window" if old else None),
    }
    if new.requests < gates.min_requests:
        return Verdict("wait", (f"{new.requests} of {gates.min_requests} requests",), figures)
    failed: list[str] = []
    allowed = (old.error_rate if old else 0.0) + gates.max_error_rate_increase
    if new.error_rate > allowed:
        failed.append(f"error rate {new.error_rate:.2%} > {allowed:.2%} allowed")
    p99 = new.p99_ms()
    limit = _limit(
        old.p99_ms() if old else None, gates.max_p99_ratio, gates.p99_slack_ms, gates.max_p99_ms
    )
    figures["p99_limit_ms"] = _r(limit, 2)
    if p99 is not None and limit is not None and p99 > limit:
        failed.append(f"latency p99 {p99:.1f} ms > {limit:.1f} ms allowed")
    ttft_n = sum(new.ttft)
    if ttft_n >= gates.min_requests:
        ttft = new.ttft_p99_ms()
        old_ttft = old.ttft_p99_ms() if old else None
        limit = _limit(
            old_ttft, gates.max_ttft_p99_ratio, gates.p99_slack_ms, gates.max_ttft_p99_ms
        )
        figures.update(new_ttft_p99_ms=ttft, old_ttft_p99_ms=old_ttft, ttft_limit_ms=limit)
        if ttft is not None and limit is not None and ttft > limit:
            failed.append(f"time to first token p99 {ttft:.1f} ms > {limit:.1f} ms allowed")
    waiting: list[str] = []
    if w.compare != "none" and w.share < 1.0:
        compared = new.mirrored - new.mirror_errors
        figures.update(mirrored=new.mirrored, mirror_errors=new.mirror_errors,
                       drift=_r(new.drift), drift_kind=w.compare)  # fmt: skip
        if compared >= gates.min_mirrored:
            drift = new.drift or 0.0
            if drift > gates.max_drift:
                failed.append(f"output drift ({w.compare}) {drift:.4f} > {gates.max_drift}")
        elif new.mirrored >= gates.min_mirrored and compared < new.mirrored / 2:
            failed.append(f"{new.mirror_errors} of {new.mirrored} mirrored requests failed")
        else:
            waiting.append(f"{compared} of {gates.min_mirrored} mirrored requests compared")
    if failed:
        return Verdict("fail", tuple(failed), figures)
    if w.elapsed_s < bake_s:
        waiting.append(f"baking {w.elapsed_s:.1f} of {bake_s:g} s")
    if waiting:
        return Verdict("wait", tuple(waiting), figures)
    return Verdict("pass", ("every gate holds",), figures)
