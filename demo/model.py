"""The demo's models, built once and cached: all-MiniLM-L6-v2 (fp32) and its int8
variant, and the tiny GPT-2 chat model (:mod:`worker.generation.tiny_lm`) as a tar
archive of its folder (the generative format's artifact)."""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PreparedModel", "prepare", "prepare_lm"]

PROBE_TEXTS = (
    "Where is the nearest train station?",
    "Inference requests fail over when a region breaks.",
    "Ich hätte gern einen Kaffee, bitte.",
    "A quick brown fox jumps over the lazy dog.",
)


@dataclass(frozen=True)
class PreparedModel:
    fp32: Path
    int8: Path
    int8_max_abs_error: float
    int8_min_cosine: float


def prepare(cache_dir: Path | None = None, tolerance: float = 0.15) -> PreparedModel:
    """Export the ONNX model and its int8 variant (probes recorded in it, so every worker
    checks it on its own CPU); refuse a variant past ``tolerance``."""
    from worker.minilm import export, export_int8

    fp32 = export(cache_dir)
    int8 = export_int8(cache_dir)
    a, b = _embed(fp32), _embed(int8)
    max_abs = float(np.abs(a - b).max())
    min_cos = float((a * b).sum(axis=1).min())
    if max_abs > tolerance:
        raise RuntimeError(f"int8 variant is off by {max_abs:.3f} (> {tolerance}); not serving it")
    return PreparedModel(fp32, int8, max_abs, min_cos)


def _embed(path: Path) -> np.ndarray:
    from worker.engines.base import open_engine

    engine = open_engine(path, "onnx", threads=1, use_gpu=False)
    try:
        texts = np.array([t.encode() for t in PROBE_TEXTS], dtype=object)
        return engine.run({"text": texts})["embedding"]
    finally:
        engine.close()


def prepare_lm(cache_dir: Path | None = None) -> Path:
    """The tiny chat model's folder (trained on first use, about 85 CPU-seconds) archived
    next to it, once: ``<folder>.tar``."""
    from worker.generation.tiny_lm import ensure_tiny_lm

    folder = ensure_tiny_lm(cache_dir)
    archive = folder.with_name(folder.name + ".tar")
    if archive.is_file():
        return archive
    tmp = archive.with_name(f"{archive.name}.{os.getpid()}.tmp")
    with tarfile.open(tmp, "w") as tar:
        tar.add(folder, arcname=folder.name)
    tmp.replace(archive)  # atomic: a concurrent run finds a whole archive or none
    return archive
