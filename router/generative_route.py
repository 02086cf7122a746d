"""What the router knows of a generative request before it is sent: its prompt's prefix
key (chained hashes of fixed-size text blocks; the router does not tokenize), its length
and its ``max_tokens`` — the plain data :class:`~router.policies.KvAwarePolicy` prices."""

from __future__ import annotations

from typing import Any

from router.policies import GenerativeRequest, prefix_key

__all__ = ["DEFAULT_MAX_TOKENS", "generative_request"]

# what a request that names no max_tokens is expected to generate (the worker's default
# is up to the context length; routing only needs an order of magnitude)
DEFAULT_MAX_TOKENS = 256


def _prompt_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                parts.append(f"{m.get('role', '')}\n{content}\n")
        return "".join(parts)
    prompt = body.get("prompt", body.get("text_input"))
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):  # token ids: a stable text form keeps the prefix key
        return " ".join(str(t) for t in prompt)
    return prompt if isinstance(prompt, str) else ""


def generative_request(model: str, body: dict[str, Any]) -> GenerativeRequest:
    """The routing view of an OpenAI completion or chat body."""
    text = _prompt_text(body)
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    max_tokens = limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_TOKENS
    return GenerativeRequest(model, len(text), max_tokens, prefix_key(text))
