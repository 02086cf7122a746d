"""The router's view of a generative request: prefix key, length and max_tokens."""

from __future__ import annotations

from router.generative_route import DEFAULT_MAX_TOKENS, generative_request

SYSTEM = {"role": "system", "content": "You answer questions about the fleet. " * 20}


def test_chats_sharing_a_system_prompt_share_a_prefix_key() -> None:
    a = generative_request("chat", {"messages": [SYSTEM, {"role": "user", "content": "a?"}]})
    b = generative_request("chat", {"messages": [SYSTEM, {"role": "user", "content": "b?"}]})
    other = generative_request("chat", {"messages": [{"role": "user", "content": "x" * 900}]})
    assert (len(a.key) >= 2 and a.key[:-1] == b.key[:-1]) or a.key == b.key
    assert len(a.key) >= 2 and a.key[:2] == b.key[:2] and a.key[0] != other.key[0]
    assert a.max_tokens == DEFAULT_MAX_TOKENS and a.prompt_chars > 700


def test_completion_prompt_forms_and_max_tokens() -> None:
    text = generative_request("m", {"prompt": "y" * 600, "max_tokens": 12})
    listed = generative_request("m", {"prompt": ["y" * 600], "max_completion_tokens": 12})
    ids = generative_request("m", {"prompt": [1, 2, 3] * 100, "max_tokens": 0})
    assert text.key == listed.key and text.max_tokens == listed.max_tokens == 12
    assert text.prompt_chars == 600
    assert ids.key and ids.max_tokens == DEFAULT_MAX_TOKENS  # 0 is not a budget
    assert generative_request("m", {}).key == ()
