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


def build_tiny_llama(out: Path, model_type: str = "llama") -> Path:
    """Llama family (``llama``, ``mistral``, ``qwen2``): RMSNorm, rotary positions,
    SwiGLU, two query heads per KV head."""
    import torch
    import transformers

    classes = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    }
    config_cls, model_cls = (getattr(transformers, n) for n in classes[model_type])
    out.mkdir(parents=True, exist_ok=True)
    vocab = save_tokenizer(out)
    config = config_cls(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=0, eos_token_id=0, initializer_range=0.5, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = model_cls(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):  # qwen2's q/k/v biases start at zero
                param.normal_(0.0, 0.5)
    model.save_pretrained(str(out))
    return out
