"""A small GPT-2 trained on first use, so every machine has a generative model offline.

The corpus is the docstrings of the running interpreter's standard library,
read in a fixed order; a byte-level BPE tokenizer and a 4-layer GPT-2 are
trained on it with fixed seeds for a fixed number of steps (about 85 CPU-seconds,
on one thread). The result is a Hugging Face model directory (``config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json`` with a chat
template), cached next to the embedding model (see :mod:`worker.minilm`) and
built at most once per machine: in a temporary directory, under a file lock,
then renamed into place.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from worker.minilm import default_cache_dir

__all__ = ["TinyLmRecipe", "ensure_tiny_lm", "stdlib_docstrings"]

if TYPE_CHECKING:
    import torch
    from transformers import GPT2LMHeadModel

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}" + EOS + "\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = [EOS, "<|system|>", "<|user|>", "<|assistant|>"]
# Matrices this small train no faster on more threads: a second thread mostly
# spins, and on a busy machine that doubles the CPU time of the build.
TRAIN_THREADS = 1


@dataclass(frozen=True)
class TinyLmRecipe:
    vocab_size: int = 4096
    n_layer: int = 4
    n_embd: int = 192
    n_head: int = 4
    n_positions: int = 512
    corpus_chars: int = 1_200_000
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 200
    lr: float = 3e-3
    seed: int = 1234
    version: int = 1

    @property
    def dirname(self) -> str:
        # any change to the recipe names a new directory
        tag = hashlib.sha256(repr(self).encode()).hexdigest()[:10]
        return f"meridian-tiny-gpt2-l{self.n_layer}-d{self.n_embd}-{tag}"


def ensure_tiny_lm(cache_dir: Path | None = None, recipe: TinyLmRecipe | None = None) -> Path:
    """The model directory, trained now if this machine has none yet."""
    recipe = recipe or TinyLmRecipe()
    root = cache_dir or default_cache_dir()
    target = root / recipe.dirname
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{recipe.dirname}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits, then finds it built
        if (target / "config.json").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{recipe.dirname}-", dir=root))
        try:
            _build(tmp, recipe)
            tmp.chmod(0o755)
            for path in tmp.iterdir():
                path.chmod(0o644)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def stdlib_docstrings(limit_chars: int) -> Iterator[str]:
    """Docstrings of the standard library's modules, classes and functions, in path order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(stdlib.rglob("*.py"), key=lambda p: p.relative_to(stdlib).as_posix()):
        rel = path.relative_to(stdlib).parts
        if rel[0] in {"site-packages", "dist-packages", "test", "idlelib", "lib2to3"} or (
            "tests" in rel
        ):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) > 40:
                    doc = _reflow(doc)
                    yield doc
                    total += len(doc)
                    if total >= limit_chars:
                        return


def _reflow(doc: str) -> str:
    """Join the wrapped lines of each paragraph, so the text reads as prose."""
    paragraphs = (" ".join(line.strip() for line in p.splitlines()) for p in doc.split("\n\n"))
    return "\n\n".join(p for p in paragraphs if p)


def _build(out: Path, recipe: TinyLmRecipe) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    started = time.monotonic()
    docs = list(stdlib_docstrings(recipe.corpus_chars))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    eos_id = tok.token_to_id(EOS)
    assert eos_id is not None
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eos_id)
    data = torch.tensor(ids, dtype=torch.long)

    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        model, loss = _train(data, tok.get_vocab_size(), eos_id, recipe)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(str(out), safe_serialization=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=EOS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=recipe.n_positions,
    )
    fast.save_pretrained(str(out))
    # older tools read the template from tokenizer_config.json only
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config.setdefault("chat_template", CHAT_TEMPLATE)
    config_path.write_text(json.dumps(tok_config, indent=2))
    log.info(
        "tiny LM built in %.0fs: %d corpus tokens, final loss %.3f",
        time.monotonic() - started,
        len(ids),
        loss,
    )


def _train(
    data: torch.Tensor, vocab_size: int, eos_id: int, recipe: TinyLmRecipe
) -> tuple[GPT2LMHeadModel, float]:
    """The GPT-2 trained on ``data`` (token ids in one row), and its last loss."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(recipe.seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=recipe.n_positions,
        n_embd=recipe.n_embd,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    model = GPT2LMHeadModel(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(recipe.seed)
    warmup = max(1, recipe.steps // 10)
    for step in range(recipe.steps):
        lr = recipe.lr * min(
            (step + 1) / warmup,
            0.5 * (1 + math.cos(math.pi * step / recipe.steps)),
        )
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(
            0, len(data) - recipe.seq_len - 1, (recipe.batch_size,), generator=gen
        )
        batch = torch.stack([data[s : s + recipe.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0 or step == recipe.steps - 1:
            log.info("tiny LM step %d/%d loss %.3f", step + 1, recipe.steps, loss.item())
    model.eval()
    return model, float(loss.item())
