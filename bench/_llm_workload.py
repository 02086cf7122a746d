"""Workloads for the generative serving benchmark, built from real traces and real text.

- Lengths: the Azure LLM inference trace 2023, ``conv`` (Patel et al., "Splitwise",
  ISCA 2024; CC-BY 4.0). Prompt and output lengths are scaled linearly so that the
  trace's 99th percentile lands on the model's budget and clipped there, which
  keeps the shape of both distributions.
- Prefixes: the Mooncake conversation trace (FAST'25), whose ``hash_ids`` name the
  512-token prefix blocks of each prompt. Each id becomes a fixed block of real
  text tokens, scaled down, so requests that share ids share prompt prefixes.
- Text: docstrings of a fixed list of standard-library modules, tokenized by the
  model's tokenizer; each prompt is a window of it cut to its target length.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
AZURE_NAME = "AzureLLMInferenceTrace_conv.csv"
MOONCAKE_NAME = "conversation_trace.jsonl"
AZURE_PATHS = (
    f"traces/Azure_AzurePublicDataset/{AZURE_NAME}",
    f"traces/Azure_AzurePublicDataset/data/{AZURE_NAME}",
)
MOONCAKE_PATHS = (
    f"traces/kvcache-ai_Mooncake/{MOONCAKE_NAME}",
    f"traces/kvcache-ai_Mooncake/FAST25-release/traces/{MOONCAKE_NAME}",
)
# Tokens per Mooncake hash id in the trace itself.
MOONCAKE_BLOCK = 512
# Modules whose docstrings make the prompt text; a fixed list so every run is alike.
TEXT_MODULES = (
    "argparse",
    "asyncio",
    "collections",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "functools",
    "heapq",
    "itertools",
    "json",
    "logging",
    "pathlib",
    "random",
    "re",
    "shutil",
    "statistics",
    "string",
    "textwrap",
    "typing",
)

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Request:
    prompt: list[int]
    max_tokens: int
    # Index of an earlier request (the previous turn of the same conversation) that
    # must have finished before this one is sent.
    after: int | None = None


class DataMissing(RuntimeError):
    pass


def _first_existing(bases: Sequence[Path], rels: Sequence[str], name: str) -> Path | None:
    for base in bases:
        for rel in rels:
            if (base / rel).is_file():
                return base / rel
    # Extracts shipped in the tree (simulator or bench data folders), by file name.
    for folder in ("simulator", "bench", "data"):
        top = ROOT / folder
        if top.is_dir():
            for hit in sorted(top.rglob(name)):
                if hit.is_file():
                    return hit
    return None


def _data_bases() -> list[Path]:
    """``$MERIDIAN_DATA``, then ``shared/data`` beside the checkout or above it."""
    bases = [Path(os.environ["MERIDIAN_DATA"])] if os.environ.get("MERIDIAN_DATA") else []
    bases += [p / "shared" / "data" for p in ROOT.parents]
    return bases


def trace_path(kind: str) -> Path:
    """The Azure ``conv`` trace (``kind="azure"``) or the Mooncake one (``"mooncake"``)."""
    rels, name = (AZURE_PATHS, AZURE_NAME) if kind == "azure" else (MOONCAKE_PATHS, MOONCAKE_NAME)
    found = _first_existing(_data_bases(), rels, name)
    if found is None:
        raise DataMissing(
            f"cannot find {name}: looked in $MERIDIAN_DATA and shared/data above {ROOT} "
            f"({', '.join(rels)}) and for a copy under simulator/, bench/ or data/; "
            "set MERIDIAN_DATA to the folder holding traces/"
        )
    return found


def azure_lengths(path: Path) -> tuple[IntArray, IntArray]:
    """Context and generated token counts of every request in the trace."""
    cols = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 2), dtype=np.int64)
    return cols[:, 0], cols[:, 1]


def scale_to(values: IntArray, budget: int, quantile: float = 99.0) -> IntArray:
    """Scale linearly so the ``quantile`` lands on ``budget``; clip to ``[1, budget]``."""
    factor = budget / float(np.percentile(values, quantile))
    scaled: IntArray = np.clip(np.rint(values * factor), 1, budget).astype(np.int64)
    return scaled


def text_corpus(encode: Callable[[str], list[int]]) -> list[int]:
    """Token ids of the docstrings of :data:`TEXT_MODULES`, in a fixed order."""
    docs: list[str] = []
    for name in TEXT_MODULES:
        module = importlib.import_module(name)
        docs.append(inspect.getdoc(module) or "")
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            doc = inspect.getdoc(obj)
            if doc:
                docs.append(doc)
    return encode("\n\n".join(docs))


def window(corpus: Sequence[int], length: int, rng: np.random.Generator) -> list[int]:
    start = int(rng.integers(0, len(corpus) - length))
    return list(corpus[start : start + length])


def azure_requests(
    path: Path,
    corpus: Sequence[int],
    n: int,
    *,
    max_prompt: int,
    max_output: int,
    seed: int = 0,
) -> list[Request]:
    """``n`` requests with the trace's (scaled) prompt and output lengths, drawn at random."""
    ctx, gen = azure_lengths(path)
    prompts, outputs = scale_to(ctx, max_prompt), scale_to(gen, max_output)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(ctx), size=n, replace=False)
    return [Request(window(corpus, int(prompts[i]), rng), int(outputs[i])) for i in rows]


def poisson_offsets(n: int, rate: float, seed: int = 1) -> list[float]:
    """Arrival offsets (s) of ``n`` requests of a Poisson process at ``rate`` per second."""
    gaps = np.random.default_rng(seed).exponential(1.0, size=n)
    gaps[0] = 0.0
    return [float(t) for t in np.cumsum(gaps) / rate]


@dataclass(frozen=True, slots=True)
class PrefixWorkload:
    requests: list[Request]
    # Fraction of prompt tokens lying in blocks an earlier request in the list already
    # had as the same prefix: what an unbounded prefix cache could skip.
    ideal_reuse: float
    conversations: int


def mooncake_requests(
    path: Path,
    corpus: Sequence[int],
    n: int,
    *,
    block_tokens: int,
    max_prompt: int,
    max_output: int,
    seed: int = 0,
) -> PrefixWorkload:
    """About ``n`` requests of whole conversations sampled from the trace, in trace order.

    A conversation is the requests sharing their first two hash ids (the system
    prompt and the first turn); each later turn repeats the earlier turns' ids and
    is sent only after the previous turn's answer (``Request.after``). Lengths are
    scaled by ``block_tokens / 512`` (prompt cut at ``max_prompt``).
    """
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records.sort(key=lambda r: r["timestamp"])
    groups: dict[tuple[int, ...], list[int]] = collections.defaultdict(list)
    conversation_of: list[tuple[int, ...]] = []
    for i, rec in enumerate(records):
        key = tuple(rec["hash_ids"][:2])
        groups[key].append(i)
        conversation_of.append(key)
    keys = list(groups)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    conversations = 0
    for k in rng.permutation(len(keys)):
        if len(chosen) >= n:
            break
        chosen += groups[keys[int(k)]]
        conversations += 1
    scale = block_tokens / MOONCAKE_BLOCK
    blocks: dict[int, list[int]] = {}
    seen: set[tuple[int, ...]] = set()
    requests, reused, total = [], 0, 0
    last_turn: dict[tuple[int, ...], int] = {}
    for i in sorted(chosen):
        rec = records[i]
        length = min(max_prompt, max(1, round(rec["input_length"] * scale)))
        ids = rec["hash_ids"][: -(-length // block_tokens)]
        tokens: list[int] = []
        for h in ids:
            if h not in blocks:
                blocks[h] = window(corpus, block_tokens, np.random.default_rng([seed, h]))
            tokens += blocks[h]
        prompt = tokens[:length]
        for j in range(len(ids)):
            key = tuple(ids[: j + 1])
            if key in seen:
                reused += min(block_tokens, length - j * block_tokens)
            seen.add(key)
        total += length
        out = min(max_output, max(1, round(rec["output_length"] * scale)))
        conversation = conversation_of[i]
        requests.append(Request(prompt, out, last_turn.get(conversation)))
        last_turn[conversation] = len(requests) - 1
    return PrefixWorkload(requests, reused / max(1, total), conversations)
