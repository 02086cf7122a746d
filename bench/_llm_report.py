"""What the generative serving benchmark measured, and how it is shown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bench._llm_forward import StepCosts
from bench._llm_load import RunFigures, Slo
from bench.report import table


@dataclass(frozen=True, slots=True)
class Schedule:
    label: str
    policy: str
    max_num_seqs: int


@dataclass(frozen=True, slots=True)
class PrefixRun:
    prefill_tokens: int
    hit_rate: float
    run: RunFigures


@dataclass
class DeviceResult:
    device: str
    # Requests/s the naive server can serve, from its unloaded service time.
    naive_capacity: float
    slo: Slo
    unloaded: RunFigures
    rates: tuple[float, ...]
    mean_prompt: float
    mean_output: float
    # Mean context (prompt plus half the output) while decoding, for the ceiling.
    context: int
    runs: dict[tuple[str, float], RunFigures] = field(default_factory=dict)
    # Share of forward steps that carried decodes and prefill chunks together.
    mixed_share: dict[tuple[str, float], float] = field(default_factory=dict)
    prefix: dict[bool, PrefixRun] = field(default_factory=dict)
    ideal_reuse: float = 0.0
    conversations: int = 0
    prefix_requests: int = 0
    prefix_rate: float = 0.0
    # (batch, tokens/s) of the bare forward pass at continuous batching's mean batch
    ceiling: tuple[int, float] | None = None
    steps: StepCosts | None = None

    @property
    def top(self) -> float:
        return self.rates[-1]

    def at_top(self, s: Schedule) -> RunFigures:
        return self.runs[s.label, self.top]

    @property
    def prefill_reduction(self) -> float:
        on, off = self.prefix[True].prefill_tokens, self.prefix[False].prefill_tokens
        return 1 - on / off if off else 0.0


def _ms(v: float) -> float:
    return v * 1e3


def sweep_table(results: Sequence[DeviceResult], schedules: Sequence[Schedule]) -> str:
    headers = [
        "device",
        "schedule",
        "rate req/s (x naive capacity)",
        "output tok/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "TPOT p50 ms",
        "TPOT p99 ms",
        "goodput req/s",
        "mean seqs decoding",
        "mixed steps",
    ]
    rows: list[list[object]] = []
    for r in results:
        for rate in r.rates:
            for s in schedules:
                f = r.runs[s.label, rate]
                rows.append(
                    [
                        r.device,
                        s.label,
                        f"{rate:.2f} ({rate / r.naive_capacity:.1f}x)",
                        f.tokens_per_s,
                        _ms(f.ttft_p50),
                        _ms(f.ttft_p99),
                        _ms(f.tpot_p50),
                        _ms(f.tpot_p99),
                        f.goodput,
                        f.mean_batch,
                        _share(r.mixed_share.get((s.label, rate))),
                    ]
                )
    return table(headers, rows)


def _share(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def prefix_table(results: Sequence[DeviceResult]) -> str:
    headers = [
        "device",
        "prefix caching",
        "prefill tokens computed",
        "prompt tokens cached",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "output tok/s",
    ]
    rows: list[list[object]] = []
    for r in results:
        for caching in (True, False):
            p = r.prefix[caching]
            rows.append(
                [
                    r.device,
                    "on" if caching else "off",
                    p.prefill_tokens,
                    f"{p.hit_rate:.3f}" if caching else "-",
                    _ms(p.run.ttft_p50),
                    _ms(p.run.ttft_p99),
                    p.run.tokens_per_s,
                ]
            )
    return table(headers, rows)


def knee(r: DeviceResult, naive: Schedule) -> float:
    """The lowest swept rate the naive server could not keep up with: it served less
    than 90% of the requests/s the best schedule served from the same arrivals. The
    top rate if it kept up with all."""
    for rate in r.rates:
        best = max(f.requests_per_s for (_label, at), f in r.runs.items() if at == rate)
        if r.runs[naive.label, rate].requests_per_s < 0.9 * best:
            return rate
    return r.top


def headline(
    r: DeviceResult, cont: Schedule, static: Schedule, naive: Schedule, key: str
) -> dict[str, float | int | str]:
    """Throughput at the top rate (all three saturated: capacity against capacity);
    latency and goodput at the knee, where the naive server saturates."""
    c, s, n = r.at_top(cont), r.at_top(static), r.at_top(naive)
    k = knee(r, naive)
    kc, ks, kn = (r.runs[x.label, k] for x in (cont, static, naive))
    out: dict[str, float | int | str] = {
        f"{key}_naive_capacity_req_per_s": round(r.naive_capacity, 2),
        f"{key}_slo_ttft_ms": round(_ms(r.slo.ttft_s), 1),
        f"{key}_slo_tpot_ms": round(_ms(r.slo.tpot_s), 2),
        f"{key}_top_rate_req_per_s": round(r.top, 2),
        f"{key}_cont_tokens_per_s": round(c.tokens_per_s, 1),
        f"{key}_static_tokens_per_s": round(s.tokens_per_s, 1),
        f"{key}_naive_tokens_per_s": round(n.tokens_per_s, 1),
        f"{key}_cont_vs_naive_tokens_ratio": round(c.tokens_per_s / n.tokens_per_s, 2),
        f"{key}_cont_vs_static_tokens_ratio": round(c.tokens_per_s / s.tokens_per_s, 2),
        f"{key}_knee_rate_req_per_s": round(k, 2),
        f"{key}_knee_cont_vs_naive_tokens_ratio": round(kc.tokens_per_s / kn.tokens_per_s, 2),
        f"{key}_ttft_p99_cont_vs_static": round(kc.ttft_p99 / ks.ttft_p99, 3),
        f"{key}_tpot_p99_cont_vs_naive": round(kc.tpot_p99 / kn.tpot_p99, 3),
        f"{key}_knee_cont_goodput_req_per_s": round(kc.goodput, 2),
        f"{key}_knee_static_goodput_req_per_s": round(ks.goodput, 2),
        f"{key}_knee_naive_goodput_req_per_s": round(kn.goodput, 2),
        f"{key}_prefix_prefill_tokens_on": r.prefix[True].prefill_tokens,
        f"{key}_prefix_prefill_tokens_off": r.prefix[False].prefill_tokens,
        f"{key}_prefix_prefill_reduction": round(r.prefill_reduction, 3),
        f"{key}_prefix_hit_rate": round(r.prefix[True].hit_rate, 3),
        f"{key}_prefix_ideal_reuse": round(r.ideal_reuse, 3),
    }
    if r.ceiling is not None:
        batch, ceiling = r.ceiling
        out[f"{key}_raw_ceiling_batch"] = batch
        out[f"{key}_raw_ceiling_tokens_per_s"] = round(ceiling, 1)
        out[f"{key}_cont_vs_raw_ceiling"] = round(c.tokens_per_s / ceiling, 3)
    if r.steps is not None:
        st = r.steps
        out[f"{key}_step_decode_ms"] = round(st.decode_ms, 2)
        out[f"{key}_step_prefill_ms"] = round(st.prefill_ms, 2)
        out[f"{key}_step_mixed_ms"] = round(st.mixed_ms, 2)
    return out


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def findings(r: DeviceResult, cont: Schedule, static: Schedule, naive: Schedule) -> str:
    """Capacity at the top rate, latency at the knee, the targets, prefix reuse, the ceiling."""
    c, s, n = r.at_top(cont), r.at_top(static), r.at_top(naive)
    k = knee(r, naive)
    kc, ks, kn = (r.runs[x.label, k] for x in (cont, static, naive))
    ratio = c.tokens_per_s / n.tokens_per_s
    ttft = kc.ttft_p99 / ks.ttft_p99
    parts = [
        f"Throughput on {r.device} at the top rate, {r.top:.2f} req/s "
        f"({r.top / r.naive_capacity:.0f}x the naive server's capacity): continuous "
        f"batching served {c.tokens_per_s:.0f} output tokens/s, "
        f"{ratio:.2f}x the naive server ({n.tokens_per_s:.0f}, {n.requests_per_s:.2f} req/s) "
        f"and {c.tokens_per_s / s.tokens_per_s:.2f}x static batching ({s.tokens_per_s:.0f}), "
        f"at a mean batch of {c.mean_batch:.1f} sequences against static's {s.mean_batch:.1f}"
        + (
            f"; {mixed:.0%} of continuous batching's steps mixed decodes with prefill chunks."
            if (mixed := r.mixed_share.get((cont.label, r.top))) is not None
            else "."
        ),
        f"Latency at {k:.2f} req/s, the lowest rate the naive server could not keep up with "
        f"(it served {kn.requests_per_s:.2f} req/s, under 90% of the best schedule's; "
        f"continuous batching {kc.requests_per_s:.2f}): "
        f"TTFT p99 {_ms(kc.ttft_p99):.0f} ms continuous, "
        f"{_ms(ks.ttft_p99):.0f} ms static ({ttft:.2f}x), {_ms(kn.ttft_p99):.0f} ms naive; "
        f"TPOT p99 {_ms(kc.tpot_p99):.1f} ms continuous, {_ms(ks.tpot_p99):.1f} ms static, "
        f"{_ms(kn.tpot_p99):.1f} ms naive (one sequence per step); goodput "
        f"{kc.goodput:.2f}, {ks.goodput:.2f} and {kn.goodput:.2f} req/s.",
        f"Targets: continuous/naive output tokens/s >= 4 (at the top rate; at the knee "
        f"continuous can serve no more than is offered): {ratio:.2f} "
        f"{_verdict(ratio >= 4)}; continuous TPOT p99 below the naive server's (at the "
        f"knee): {_verdict(kc.tpot_p99 < kn.tpot_p99)}; continuous TTFT p99 <= 0.5x "
        f"static's (at the knee): {ttft:.2f} {_verdict(ttft <= 0.5)}; prefill tokens cut "
        f"by prefix caching >= 50%: {r.prefill_reduction:.1%} "
        f"{_verdict(r.prefill_reduction >= 0.5)}.",
        f"Prefix reuse ({r.prefix_requests} requests of {r.conversations} Mooncake "
        f"conversations at {r.prefix_rate:.2f} req/s, continuous batching): caching cut the "
        f"prefill tokens computed by {r.prefill_reduction:.1%}, with "
        f"{r.prefix[True].hit_rate:.1%} of prompt tokens found in the cache; an unbounded "
        "cache could skip at most "
        f"{r.ideal_reuse:.1%} of this sample's prompt tokens (the whole blocks its "
        "requests share with earlier ones)"
        + (
            ", so on this workload no cache reaches the 50% target." if r.ideal_reuse < 0.5 else "."
        ),
    ]
    if r.ceiling is not None:
        batch, ceiling = r.ceiling
        parts.append(
            f"The bare forward pass (the engine's model runner, no scheduling, sampling "
            f"or streaming) decodes {ceiling:.0f} tokens/s at batch {batch} and context "
            f"{r.context}; continuous batching served {c.tokens_per_s / ceiling:.2f}x that."
        )
    if r.steps is not None:
        st = r.steps
        excess = st.mixed_ms / (st.decode_ms + st.prefill_ms)
        parts.append(
            f"Mixed steps on the bare forward pass: {st.batch} decodes take {st.decode_ms:.1f} "
            f"ms a step and one {st.chunk}-token prefill chunk {st.prefill_ms:.1f} ms; the two "
            f"in one step take {st.mixed_ms:.1f} ms ({excess:.2f}x the sum)"
            + (
                ", so every step that admits a prompt slows every running sequence's next "
                "token, which is what continuous batching's TPOT pays for here."
                if excess > 1.2
                else "."
            )
        )
    return " ".join(parts)
