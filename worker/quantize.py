"""``meridian quantize``: an int8 variant of an ONNX model, checked against fp32.

Weights are quantized dynamically (onnxruntime.quantization) to signed 8-bit
integers per output channel with ``reduce_range`` (7-bit values, -64..63);
activations are quantized to unsigned 8 bits at run time. Both models then run
on the same sample inputs; the command reports the largest absolute error and
the relative error (largest absolute error divided by the largest fp32 output
magnitude) and refuses, writing nothing, when the relative error exceeds
``--tolerance``. The variant carries a probe set (:mod:`worker.probes`): the
first ``--probes`` sample rows, the fp32 outputs for them and the tolerance, so
that a worker checks the variant on its own CPU before serving it. With
``--register`` it records the variant in the control plane and uploads it.

Why this form. ONNX Runtime multiplies u8 activations by s8 weights; on x86-64
CPUs without VNNI (AVX2, AVX-512 without VNNI) the kernel adds pairs of
products in 16-bit lanes with saturation (``vpmaddubsw``), and full-range
weights overflow them: 255 * 127 * 2 > 32767. VNNI CPUs accumulate in 32 bits
and do not (ONNX Runtime's quantization documentation names the issue and
``reduce_range`` as its remedy). The same full-range model is therefore accurate on one machine and
off by a quarter of its output range on another. With 7-bit weights a pair
sums to at most 255 * 64 * 2 = 32640, which fits: the integer results are exact
on every x86-64 CPU, so the error does not depend on the CPU model.

Measured with ``python -m bench.quantize`` on a 2-core AVX2 machine without
VNNI (relative error; speed-up over fp32 at batch 8 sentences / 64 rows, one
thread)::

    model                 s8 full range   s8 7-bit per-channel   u8u8 per-channel
    MiniLM-L6 (sentences) 0.24   x1.70    0.113  x1.76           0.116  x1.27
    bench MLP 256-1024    0.019  x1.73    0.026  x1.91           0.016  x1.49
    test MLP 16-256-4     0.39   x1.40    0.023  x1.31           0.014  x1.13

Full range saturates here (0.39 on the test MLP, 0.24 on MiniLM). Per-tensor
7-bit weights lose too much on MiniLM (0.52): per-channel scales win it back.
u8 weights with u8 activations (u8u8) are exact everywhere too and about as
accurate, but their kernels are slower (x1.53 against x1.70 on one MiniLM
sentence, x1.54 against x1.94 on the heavy MLP), so the variant is s8 7-bit
per-channel. docs/worker.md has the full table.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_TOLERANCE",
    "QuantReport",
    "add_arguments",
    "build_variant",
    "compare",
    "main",
    "quantize_int8",
    "sample_feeds",
]


DEFAULT_TOLERANCE = 0.05
PROBE_ROWS = 8
# Sentences tokenized into probe inputs for text models (a tokenizer in the metadata).
SAMPLE_TEXTS = (
    "Where is the nearest train station?",
    "Inference requests fail over when a region breaks.",
    "Ich hätte gern einen Kaffee, bitte.",
    "A quick brown fox jumps over the lazy dog.",
    "The quarterly report shows revenue growth in every region but one.",
    "How do I reset my password?",
    "GPU memory errors take a worker out of rotation.",
    "Le chat dort sur le canapé.",
)


@dataclass(frozen=True)
class QuantReport:
    max_abs_error: float
    max_rel_error: float
    samples: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="fp32 ONNX model")
    parser.add_argument("--out", required=True, type=Path, help="where to write the int8 model")
    parser.add_argument("--samples", type=int, default=64, help="sample rows to compare (64)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest accepted relative error vs fp32, recorded with the probes (0.05)",
    )
    parser.add_argument(
        "--probes", type=int, default=PROBE_ROWS, help="sample rows kept as probes (8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sample input seed")
    parser.add_argument("--register", metavar="URL", help="control plane base URL")
    parser.add_argument("--token", help="control plane bearer token")
    parser.add_argument("--name", help="model name in the control plane")
    parser.add_argument("--version", help="model version in the control plane")
    parser.add_argument("--variant", default="int8", help="variant name (int8)")


def quantize_int8(src: Path, dst: Path) -> None:
    """Write the int8 form of ``src`` to ``dst`` (no probes: see :func:`build_variant`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
    )


def build_variant(
    src: Path,
    dst: Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    samples: int = 64,
    seed: int = 0,
    probe_rows: int = PROBE_ROWS,
    feeds: dict[str, np.ndarray] | None = None,
) -> QuantReport:
    """Quantize ``src`` into ``dst``, compare both on sample inputs (``feeds``, or
    generated ones), and record the first ``probe_rows`` rows as the variant's probes
    with ``tolerance``. Refusing past the tolerance is the caller's choice."""
    from worker.probes import ProbeSet, attach

    quantize_int8(src, dst)
    ref = _session(src)
    feeds = feeds if feeds is not None else sample_feeds(ref, samples, seed)
    names = [o.name for o in ref.get_outputs()]
    expected = ref.run(names, feeds)
    report = _report(expected, _session(dst).run(names, feeds), feeds)
    probe_in = {k: _head(v, probe_rows) for k, v in feeds.items()}
    probe_out = ref.run(names, probe_in)
    probes = ProbeSet(probe_in, dict(zip(names, probe_out, strict=True)), tolerance)
    attach(dst, probes)
    return report


def _head(array: np.ndarray, rows: int) -> np.ndarray:
    return array[:rows] if array.ndim else array


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _report(expected: list[Any], got: list[Any], feeds: dict[str, np.ndarray]) -> QuantReport:
    from worker.probes import max_errors

    max_abs, rel = max_errors(expected, got)
    rows = max((v.shape[0] for v in feeds.values() if v.ndim), default=1)
    return QuantReport(max_abs, rel, rows)


def sample_feeds(session: Any, rows: int, seed: int) -> dict[str, np.ndarray]:
    """``rows`` rows of normal floats and small integers, or for a text model (a
    tokenizer in its metadata) :data:`SAMPLE_TEXTS` tokenized."""
    metadata = session.get_modelmeta().custom_metadata_map
    if "meridian.tokenizer" in metadata:
        return _text_feeds(metadata["meridian.tokenizer"])
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        if dims and not (isinstance(arg.shape[0], int) and arg.shape[0] > 0):
            dims[0] = rows
        if arg.type == "tensor(float)":
            feeds[arg.name] = rng.standard_normal(dims).astype(np.float32)
        elif arg.type == "tensor(int64)":
            feeds[arg.name] = rng.integers(0, 10, dims).astype(np.int64)
        else:
            raise ValueError(f"input '{arg.name}' of type {arg.type} is not supported")
    return feeds


def _text_feeds(tokenizer_json: str) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(list(SAMPLE_TEXTS))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def compare(reference: Path, candidate: Path, *, samples: int, seed: int = 0) -> QuantReport:
    ref = _session(reference)
    feeds = sample_feeds(ref, samples, seed)
    names = [o.name for o in ref.get_outputs()]
    return _report(ref.run(names, feeds), _session(candidate).run(names, feeds), feeds)


def register(args: argparse.Namespace, artifact: Path, report: QuantReport) -> None:
    """Record the variant in the control plane and upload its bytes."""
    import httpx

    base = args.register.rstrip("/")
    data = artifact.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    auth = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    prefix = f"{base}/v1/models/{args.name}/versions/{args.version}/variants"
    with httpx.Client(timeout=60.0) as client:
        r = client.post(
            prefix,
            json={
                "name": args.variant,
                "description": (
                    f"dynamic int8 quantization (7-bit per-channel weights); "
                    f"relative error {report.max_rel_error:.4g}"
                ),
                "max_abs_error": report.max_abs_error,
            },
            headers=auth,
        )
        r.raise_for_status()
        r = client.put(
            f"{prefix}/{args.variant}/artifact",
            content=data,
            headers={**auth, "X-Artifact-Sha256": sha, "Content-Type": "application/octet-stream"},
        )
        r.raise_for_status()
    print(f"registered variant {args.variant} of {args.name}/{args.version} (sha256 {sha})")


def main(args: argparse.Namespace) -> int:
    if args.register and not (args.name and args.version):
        print("meridian quantize: --register needs --name and --version")
        return 2
    if not args.model.is_file():
        print(f"meridian quantize: no model at {args.model}")
        return 2
    if args.samples < 1 or args.probes < 1:
        print("meridian quantize: --samples and --probes must be at least 1")
        return 2
    if not 0 <= args.tolerance < float("inf"):
        print(f"meridian quantize: --tolerance {args.tolerance} is not a finite value >= 0")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "model.int8.onnx"
        report = build_variant(
            args.model,
            candidate,
            tolerance=args.tolerance,
            samples=args.samples,
            seed=args.seed,
            probe_rows=args.probes,
        )
        print(
            f"max_abs_error={report.max_abs_error:.6g} max_rel_error={report.max_rel_error:.6g} "
            f"samples={report.samples} tolerance={args.tolerance:g}"
        )
        if report.max_rel_error > args.tolerance:
            print("refused: the int8 model is outside the tolerance; nothing written")
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(candidate, args.out)
    print(f"wrote {args.out}")
    if args.register:
        import httpx

        try:
            register(args, args.out, report)
        except httpx.HTTPError as exc:
            print(f"registration failed: {exc}")
            return 1
    return 0
