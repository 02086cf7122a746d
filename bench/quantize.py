"""int8 variants against fp32: error and speed, side by side on this machine.

``python -m bench.quantize [--quick]``. For each model -- all-MiniLM-L6-v2 (the
demo's, needs the ``demo`` extra), the worker benchmark's MLPs (``bench.worker``)
and the worker tests' wide MLP -- it builds three int8 forms with
onnxruntime.quantization.quantize_dynamic:

* ``s8 7-bit/ch``: what ``meridian quantize`` writes (s8 weights with
  ``reduce_range``, per-channel scales): exact integer math on every x86-64 CPU;
* ``s8 full``: full-range s8 weights, per tensor (the earlier form): it saturates
  16-bit sums on CPUs without VNNI, so its error depends on the CPU;
* ``u8u8/ch``: u8 weights, per-channel: exact everywhere too, slower kernels.

Error is the relative error of ``meridian quantize`` (largest absolute difference
over the largest fp32 magnitude) on the sample inputs (tokenized sentences for
MiniLM). Speed is fp32 time over int8 time per run, one intra-op thread, timed in
alternating rounds so that both see the same machine load.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import parse_args, record, table

FORMS = ("s8 7-bit/ch", "s8 full", "u8u8/ch")


@dataclass(frozen=True)
class Row:
    model: str
    form: str
    rel_error: float
    speedup_b1: float
    speedup_bn: float
    batch: int
    size_ratio: float
    min_cosine: float | None


def quantize(src: Path, dst: Path, form: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from worker.quantize import quantize_int8

    if form == "s8 7-bit/ch":
        quantize_int8(src, dst)  # the form the project ships
    elif form == "s8 full":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    else:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8, per_channel=True)


def session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def side_by_side(
    a: Callable[[], object], b: Callable[[], object], seconds: float, rounds: int = 5
) -> float:
    """Median over alternating rounds of (time per call of ``a``) / (time per call of ``b``)."""

    def per_call(fn: Callable[[], object], budget: float) -> float:
        fn()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < budget:
            fn()
            n += 1
        return (time.perf_counter() - start) / n

    budget = seconds / (2 * rounds)
    return statistics.median(per_call(a, budget) / per_call(b, budget) for _ in range(rounds))


def first_rows(feeds: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    return {k: v[:rows] for k, v in feeds.items()}


def runners(
    ref: Any, cand: Any, feeds: dict[str, np.ndarray]
) -> tuple[Callable[[], object], Callable[[], object]]:
    return (lambda: ref.run(None, feeds)), (lambda: cand.run(None, feeds))


def measure(
    name: str, src: Path, work: Path, seconds: float, forms: Sequence[str], text: bool
) -> list[Row]:
    from worker.probes import max_errors
    from worker.quantize import sample_feeds

    ref = session(src)
    feeds = sample_feeds(ref, 64, 0)
    batch = next(iter(feeds.values())).shape[0]
    expected = ref.run(None, feeds)
    rows = []
    for form in forms:
        dst = work / f"{name}-{form.replace(' ', '_').replace('/', '_')}.onnx"
        quantize(src, dst, form)
        cand = session(dst)
        got = cand.run(None, feeds)
        _, rel = max_errors(expected, got)
        b1 = side_by_side(*runners(ref, cand, first_rows(feeds, 1)), seconds)
        bn = side_by_side(*runners(ref, cand, feeds), seconds)
        cosine = float((expected[0] * got[0]).sum(axis=1).min()) if text else None
        size = dst.stat().st_size / src.stat().st_size
        rows.append(Row(name, form, rel, b1, bn, batch, size, cosine))
        print(f"{name} {form}: rel_error={rel:.4f} speedup b1={b1:.2f} b{batch}={bn:.2f}")
    return rows


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return ", ".join(shown) or "none of avx2/avx512/vnni"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's pre-processing advice
    from bench.worker import DIMS, HEAVY_DIMS, build_mlp
    from tests.worker.models import build
    from worker.minilm import export

    seconds = 1.0 if args.quick else 4.0
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        built = build(work)
        build_mlp(work / "bench_mlp.onnx", DIMS)
        build_mlp(work / "heavy_mlp.onnx", HEAVY_DIMS)
        models = [
            ("MiniLM-L6", export(), True),
            ("bench MLP 256-1024-1024-16", work / "bench_mlp.onnx", False),
            ("heavy MLP 512-2048-2048-16", work / "heavy_mlp.onnx", False),
            ("test MLP 16-256-256-4", built.wide_onnx, False),
        ]
        for name, path, text in models:
            forms = FORMS[:2] if args.quick and name.startswith("heavy") else FORMS
            rows += measure(name, path, work, seconds, forms, text)

    def pick(model: str, form: str = FORMS[0]) -> Row:
        return next(r for r in rows if r.model.startswith(model) and r.form == form)

    body_rows = [
        [
            r.model,
            r.form,
            r.rel_error,
            "" if r.min_cosine is None else f"{r.min_cosine:.4f}",
            r.speedup_b1,
            f"{r.speedup_bn:.3g} (batch {r.batch})",
            r.size_ratio,
        ]
        for r in rows
    ]
    mini, mini_full = pick("MiniLM"), pick("MiniLM", "s8 full")
    flags = cpu_flags()
    saturation = (
        "this CPU has VNNI: 32-bit sums, no saturation"
        if "vnni" in flags
        else "this CPU has no VNNI: its 16-bit pair sums saturate"
    )
    bench, wide = pick("bench"), pick("test")
    body = (
        f"CPU flags: {flags}. fp32 vs int8, one intra-op thread; speed-up is fp32 time "
        "over int8 time (above 1: int8 is faster); size is int8 bytes over fp32 bytes.\n\n"
        + table(
            [
                "model",
                "int8 form",
                "rel. error",
                "min cosine",
                "speed-up b1",
                "speed-up batch",
                "size",
            ],
            body_rows,
        )
        + f"\n\nThe shipped form (s8 7-bit/ch) keeps MiniLM within {mini.rel_error:.3g} relative "
        f"error (cosine to fp32 at least {mini.min_cosine or 0:.4f}) at "
        f"{mini.speedup_bn:.2f}x fp32's speed on {mini.batch} sentences; full-range s8 "
        f"measures {mini_full.rel_error:.3g} here ({saturation})."
    )
    figures: dict[str, float | int | str] = {
        "minilm_int8_rel_error": round(mini.rel_error, 4),
        "minilm_int8_min_cosine": round(mini.min_cosine or 0.0, 4),
        "minilm_int8_speedup_b1": round(mini.speedup_b1, 2),
        "minilm_int8_speedup_batch": round(mini.speedup_bn, 2),
        "minilm_s8_full_range_rel_error": round(mini_full.rel_error, 4),
        "bench_mlp_int8_rel_error": round(bench.rel_error, 4),
        "bench_mlp_int8_speedup_b1": round(bench.speedup_b1, 2),
        "bench_mlp_int8_speedup_b64": round(bench.speedup_bn, 2),
        "test_mlp_int8_rel_error": round(wide.rel_error, 4),
        "test_mlp_s8_full_range_rel_error": round(pick("test", "s8 full").rel_error, 4),
    }
    record(
        "quantize",
        "int8 variants vs fp32 (bench.quantize)",
        body,
        figures,
        quick=args.quick,
        write=not args.no_write,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
