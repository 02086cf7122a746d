"""``meridian quantize``: an int8 variant of an ONNX model, checked against fp32.

Weights are quantized dynamically to int8 (onnxruntime.quantization). Both
models then run on the same random sample inputs; the command reports the
largest absolute error and the relative error (largest absolute error divided
by the largest fp32 output magnitude) and refuses, writing nothing, when the
relative error exceeds ``--tolerance``. With ``--register`` it records the
variant in the control plane and uploads the artifact.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["QuantReport", "add_arguments", "compare", "main", "quantize_int8"]


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
        default=0.05,
        help="largest accepted relative error vs fp32 (default 0.05)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sample input seed")
    parser.add_argument("--register", metavar="URL", help="control plane base URL")
    parser.add_argument("--token", help="control plane bearer token")
    parser.add_argument("--name", help="model name in the control plane")
    parser.add_argument("--version", help="model version in the control plane")
    parser.add_argument("--variant", default="int8", help="variant name (int8)")


def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def _sample_inputs(session: object, rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():  # type: ignore[attr-defined]
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


def compare(reference: Path, candidate: Path, *, samples: int, seed: int = 0) -> QuantReport:
    import onnxruntime as ort

    options = ort.SessionOptions()
    ref = ort.InferenceSession(str(reference), options, providers=["CPUExecutionProvider"])
    cand = ort.InferenceSession(str(candidate), options, providers=["CPUExecutionProvider"])
    feeds = _sample_inputs(ref, samples, seed)
    max_abs = 0.0
    max_ref = 0.0
    for a, b in zip(ref.run(None, feeds), cand.run(None, feeds), strict=True):
        a64 = np.asarray(a, dtype=np.float64)
        max_abs = max(max_abs, float(np.max(np.abs(a64 - np.asarray(b, dtype=np.float64)))))
        max_ref = max(max_ref, float(np.max(np.abs(a64))))
    rel = max_abs / max_ref if max_ref > 0 else (0.0 if max_abs == 0 else float("inf"))
    return QuantReport(max_abs, rel, samples)


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
                    f"dynamic int8 quantization; relative error {report.max_rel_error:.4g}"
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
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "model.int8.onnx"
        quantize_int8(args.model, candidate)
        report = compare(args.model, candidate, samples=args.samples, seed=args.seed)
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
