"""A randomly initialised tiny GPT-2 with a small trained tokenizer, saved HF-style."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Return the number of items in a container.",
    "Open the file and return a stream; raise OSError on failure.",
    "A paged cache keeps keys and values in fixed-size blocks.",
    "Schedulers admit waiting sequences when blocks are free.",
    "Unicode: naïve café, Grüße, 東京, emoji 🙂 and more.",
]
EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def save_tokenizer(out: Path, vocab_size: int = 400) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, chat_template=CHAT_TEMPLATE
    )
    fast.save_pretrained(str(out))
    return int(tok.get_vocab_size())


def build_tiny_gpt2(
    out: Path, *, n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_positions: int = 256
) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out.mkdir(parents=True, exist_ok=True)
    vocab = save_tokenizer(out)
    config = GPT2Config(
        vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, bos_token_id=0, eos_token_id=0, initializer_range=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(str(out))
    return out
