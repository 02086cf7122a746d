"""One streamed OpenAI generation as the router sees it, and how to continue it.

The worker, asked with ``x-meridian-token-ids: 1``, adds to each streamed chunk an
extension ``"meridian": {"token_ids": [...]}`` (the first chunk also carries
``prompt_token_ids`` and the ``max_tokens`` it resolved). :class:`Generation` strips
it from what the client sees and keeps the ids, so that when the worker breaks off
mid-stream the router can ask another one for the rest: the prompt plus the tokens
already sent, as token ids, with the same sampling settings and ``max_tokens``
reduced by what was sent. The continuation's chunks (plain completions) are
rewritten into the client's stream: its id, its object kind (chat or completion),
one usage at the end that counts the whole generation.

Plain data in, bytes out: no sockets here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["TOKEN_IDS_HEADER", "Generation"]

TOKEN_IDS_HEADER = b"x-meridian-token-ids"
EXTENSION = "meridian"
# sampling settings a continuation keeps (the seed too: greedy output is then exact)
_KEPT = ("temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "user")
DONE = b"data: [DONE]\n\n"
_EXT_KEY = b',"' + EXTENSION.encode() + b'":'


@dataclass
class Generation:
    """A client's streamed completion or chat completion, token by token."""

    chat: bool
    request: dict[str, Any]
    prompt_ids: list[int] | None = None
    max_tokens: int | None = None
    sent_ids: list[int] = field(default_factory=list)
    finished: bool = False  # a chunk with a finish reason was forwarded
    done: bool = False  # the stream's [DONE] was forwarded
    usage_sent: bool = False
    continuations: int = 0
    _first: bytes | None = None  # the first chunk the client got, as sent
    _env: dict[str, Any] | None = None
    _before: int = 0  # tokens sent before the current upstream answered

    @property
    def include_usage(self) -> bool:
        options = self.request.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    # --- the worker's events -----------------------------------------------------------

    def event(self, raw: bytes) -> bytes:
        """One server-sent event from the worker → what the client gets ('' for none)."""
        data = raw.strip()
        if not data.startswith(b"data:"):
            return raw
        payload = data[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return DONE
        if not self.continuations:
            return self._strip(raw, payload)
        if self._first is None:
            self._first = payload
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return raw
        if not isinstance(obj, dict):
            return raw
        ext = obj.pop(EXTENSION, None)
        if isinstance(ext, dict):
            self._take(ext)
        rewritten = self._rewrite(obj)
        if rewritten is None:
            return b""
        choices = rewritten.get("choices") or ()
        if rewritten.get("usage") is not None and not choices:
            self.usage_sent = True
        if any(c.get("finish_reason") for c in choices if isinstance(c, dict)):
            self.finished = True
        return b"data: " + orjson.dumps(rewritten) + b"\n\n"

    def _strip(self, raw: bytes, payload: bytes) -> bytes:
        """The worker's own chunk without the extension, cut out by bytes: the worker
        writes it last, so the rest of the chunk is forwarded as it was written."""
        cut = payload.rfind(_EXT_KEY)
        if cut >= 0 and payload.endswith(b"}"):
            try:
                ext = orjson.loads(payload[cut + len(_EXT_KEY) : -1])
            except orjson.JSONDecodeError:
                ext = None
            if isinstance(ext, dict):
                self._take(ext)
                payload = payload[:cut] + b"}"
                raw = b"data: " + payload + b"\n\n"
        if self._first is None and payload.startswith(b"{"):
            self._first = payload
        if b'"finish_reason":"' in payload:
            self.finished = True
        if b'"choices":[]' in payload and b'"usage":{' in payload:
            self.usage_sent = True
        return raw

    def _take(self, ext: dict[str, Any]) -> None:
        if self.prompt_ids is None and isinstance(ext.get("prompt_token_ids"), list):
            self.prompt_ids = [int(t) for t in ext["prompt_token_ids"]]
        if self.max_tokens is None and isinstance(ext.get("max_tokens"), int):
            self.max_tokens = int(ext["max_tokens"])
        self.sent_ids.extend(int(t) for t in ext.get("token_ids") or ())

    @property
    def _envelope(self) -> dict[str, Any]:
        """id, created and model of the client's stream (from its first chunk)."""
        if self._env is None:
            first = orjson.loads(self._first) if self._first else {}
            self._env = {k: first.get(k) for k in ("id", "created", "model")}
        return self._env

    def _rewrite(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """A continuation's completion chunk in the client's stream's shape."""
        if "error" in obj:
            return obj
        env = self._envelope
        out: dict[str, Any] = {
            "id": env.get("id"),
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": env.get("created"),
            "model": env.get("model"),
            "system_fingerprint": None,
        }
        usage = obj.get("usage")
        choices = obj.get("choices") or []
        if usage is not None and not choices:
            if not self.include_usage:
                return None
            out["choices"] = []
            out["usage"] = self._usage(int(usage.get("completion_tokens", 0)))
            return out
        rewritten = []
        for c in choices:
            text, finish = c.get("text", ""), c.get("finish_reason")
            if self.chat:
                delta = {"content": text} if text or finish is None else {}
                rewritten.append(
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                )
            else:
                rewritten.append(
                    {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                )
        out["choices"] = rewritten
        if self.include_usage:
            out["usage"] = None
        return out

    def _usage(self, completion_now: int) -> dict[str, int]:
        prompt = len(self.prompt_ids or ())
        completion = self._before + completion_now
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    # --- continuing elsewhere ----------------------------------------------------------

    def continuation(self) -> bytes | None:
        """The body of a /v1/completions request for the rest of the generation, or
        None when it cannot be continued (the worker gave no ids) or needs no more."""
        if self.prompt_ids is None or self.max_tokens is None:
            return None
        left = self.max_tokens - len(self.sent_ids)
        if left <= 0:
            return None
        body: dict[str, Any] = {
            "model": self.request.get("model"),
            "prompt": self.prompt_ids + self.sent_ids,
            "max_tokens": left,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for key in _KEPT:
            if self.request.get(key) is not None:
                body[key] = self.request[key]
        return orjson.dumps(body)

    def begin_continuation(self) -> None:
        self.continuations += 1
        self._before = len(self.sent_ids)

    def ending(self) -> bytes:
        """What closes the client's stream when the worker broke off after the last token
        (a finish reason was sent, or max_tokens reached): a final chunk if none was sent,
        the usage if asked for, then [DONE]."""
        parts = []
        env = self._envelope
        base = {"id": env.get("id"), "created": env.get("created"), "model": env.get("model"),
                "system_fingerprint": None}  # fmt: skip
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        if not self.finished:
            if self.chat:
                choice: dict[str, Any] = {"index": 0, "delta": {}, "logprobs": None}
            else:
                choice = {"index": 0, "text": "", "logprobs": None}
            choice["finish_reason"] = "length"
            chunk = base | {"object": kind, "choices": [choice]}
            parts.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
            self.finished = True
        if self.include_usage and not self.usage_sent:
            self._before = len(self.sent_ids)
            usage = base | {"object": kind, "choices": [], "usage": self._usage(0)}
            parts.append(b"data: " + orjson.dumps(usage) + b"\n\n")
        parts.append(DONE)
        self.done = True
        return b"".join(parts)
