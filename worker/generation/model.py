"""Decoder-only causal LMs read from Hugging Face weights, run over the paged KV cache.

Supported ``model_type``: ``gpt2``, and the Llama family ``llama``, ``mistral``,
``qwen2`` (RMSNorm, rotary positions without scaling, SwiGLU, grouped-query
attention, optional projection biases; a sliding window caps the context). The layers are
plain tensors taken from the ``*.safetensors`` files of the model directory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from worker.generation.attention import AttentionPlan, paged_attention

__all__ = ["SUPPORTED_MODEL_TYPES", "DecoderLM", "ModelShape", "UnsupportedModel", "load_decoder"]

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")


class UnsupportedModel(ValueError):
    pass


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int


class DecoderLM(Protocol):
    shape: ModelShape

    def hidden(
        self,
        token_ids: torch.Tensor,
        plan: AttentionPlan,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        """Final hidden states ``[T, d]`` of the new tokens; writes their KV.

        The caches are ``[layers, slots, kv_heads, head_dim]``.
        """
        ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


def load_decoder(model_dir: Path, device: torch.device, dtype: torch.dtype) -> DecoderLM:
    config = json.loads((model_dir / "config.json").read_text())
    model_type = config.get("model_type")
    weights = _load_weights(model_dir, device, dtype)
    if model_type == "gpt2":
        return Gpt2(config, weights)
    if model_type in ("llama", "mistral", "qwen2"):
        return Llama(config, weights)
    raise UnsupportedModel(
        f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def _load_weights(model_dir: Path, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UnsupportedModel(f"no *.safetensors weights in {model_dir}")
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        for key, tensor in load_file(str(path)).items():
            for prefix in ("transformer.", "model."):
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    break
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            weights[key] = tensor.to(device)
    return weights


def _need(weights: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    try:
        return weights[key]
    except KeyError:
        raise UnsupportedModel(f"weight {key!r} missing from the checkpoint") from None


_ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


class Gpt2:
    def __init__(self, config: dict[str, Any], w: dict[str, torch.Tensor]) -> None:
        if config.get("scale_attn_by_inverse_layer_idx") or config.get("reorder_and_upcast_attn"):
            raise UnsupportedModel("gpt2 variants with per-layer attention scaling are unsupported")
        act = config.get("activation_function", "gelu_new")
        if act not in _ACTIVATIONS:
            raise UnsupportedModel(f"activation {act!r} is not supported")
        self._act = _ACTIVATIONS[act]
        d, heads = int(config["n_embd"]), int(config["n_head"])
        self.shape = ModelShape(
            "gpt2", int(config["n_layer"]), heads, heads, d // heads,
            int(config["vocab_size"]), int(config["n_positions"]),
        )  # fmt: skip
        self._eps = float(config.get("layer_norm_epsilon", 1e-5))
        self._scale = None if config.get("scale_attn_weights", True) else 1.0
        self._wte = _need(w, "wte.weight")
        self._wpe = _need(w, "wpe.weight")
        self._layers = []
        for i in range(self.shape.num_layers):
            p = f"h.{i}."
            # HF's Conv1D stores [in, out]; keep [out, in] for F.linear
            self._layers.append(
                {
                    "ln1_w": _need(w, p + "ln_1.weight"),
                    "ln1_b": _need(w, p + "ln_1.bias"),
                    "qkv_w": _need(w, p + "attn.c_attn.weight").t().contiguous(),
                    "qkv_b": _need(w, p + "attn.c_attn.bias"),
                    "o_w": _need(w, p + "attn.c_proj.weight").t().contiguous(),
                    "o_b": _need(w, p + "attn.c_proj.bias"),
                    "ln2_w": _need(w, p + "ln_2.weight"),
                    "ln2_b": _need(w, p + "ln_2.bias"),
                    "fc_w": _need(w, p + "mlp.c_fc.weight").t().contiguous(),
                    "fc_b": _need(w, p + "mlp.c_fc.bias"),
                    "proj_w": _need(w, p + "mlp.c_proj.weight").t().contiguous(),
                    "proj_b": _need(w, p + "mlp.c_proj.bias"),
                }
            )
        self._lnf_w = _need(w, "ln_f.weight")
        self._lnf_b = _need(w, "ln_f.bias")
        self._head = w.get("lm_head.weight", self._wte)

    def hidden(
        self,
        token_ids: torch.Tensor,
        plan: AttentionPlan,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        s = self.shape
        d = s.num_heads * s.head_dim
        h = self._wte[token_ids] + self._wpe[plan.positions]
        for i, L in enumerate(self._layers):
            a = F.layer_norm(h, (d,), L["ln1_w"], L["ln1_b"], self._eps)
            q, k, v = F.linear(a, L["qkv_w"], L["qkv_b"]).split(d, dim=-1)
            shape = (-1, s.num_heads, s.head_dim)
            att = paged_attention(
                q.reshape(shape), k.reshape(shape), v.reshape(shape),
                k_cache[i], v_cache[i], plan, self._scale,
            )  # fmt: skip
            h = h + F.linear(att.reshape(-1, d), L["o_w"], L["o_b"])
            m = F.layer_norm(h, (d,), L["ln2_w"], L["ln2_b"], self._eps)
            m = F.linear(self._act(F.linear(m, L["fc_w"], L["fc_b"])), L["proj_w"], L["proj_b"])
            h = h + m
        return F.layer_norm(h, (d,), self._lnf_w, self._lnf_b, self._eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self._head)


class Llama:
    def __init__(self, config: dict[str, Any], w: dict[str, torch.Tensor]) -> None:
        scaling = config.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type")) != "default":
            raise UnsupportedModel("llama with rope_scaling is not supported")
        act = config.get("hidden_act", "silu")
        if act not in _ACTIVATIONS:
            raise UnsupportedModel(f"activation {act!r} is not supported")
        self._act = _ACTIVATIONS[act]
        d, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or d // heads)
        max_positions = int(config.get("max_position_embeddings", 2048))
        window = config.get("sliding_window")
        if config.get("model_type") == "qwen2" and not config.get("use_sliding_window"):
            window = None
        if window:
            # no sliding-window attention here: stay where it equals full attention
            max_positions = min(max_positions, int(window))
        self.shape = ModelShape(
            str(config.get("model_type", "llama")), int(config["num_hidden_layers"]), heads,
            int(config.get("num_key_value_heads") or heads), head_dim,
            int(config["vocab_size"]), max_positions,
        )  # fmt: skip
        self._eps = float(config.get("rms_norm_eps", 1e-6))
        theta = float(config.get("rope_theta", 10000.0))
        device = w["embed_tokens.weight"].device if "embed_tokens.weight" in w else None
        self._inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
        )
        self._embed = _need(w, "embed_tokens.weight")
        self._layers = []
        for i in range(self.shape.num_layers):
            p = f"layers.{i}."
            layer = {
                "in_norm": _need(w, p + "input_layernorm.weight"),
                "q_w": _need(w, p + "self_attn.q_proj.weight"),
                "k_w": _need(w, p + "self_attn.k_proj.weight"),
                "v_w": _need(w, p + "self_attn.v_proj.weight"),
                "o_w": _need(w, p + "self_attn.o_proj.weight"),
                "post_norm": _need(w, p + "post_attention_layernorm.weight"),
                "gate_w": _need(w, p + "mlp.gate_proj.weight"),
                "up_w": _need(w, p + "mlp.up_proj.weight"),
                "down_w": _need(w, p + "mlp.down_proj.weight"),
            }
            for name in ("q", "k", "v", "o"):
                bias = w.get(p + f"self_attn.{name}_proj.bias")
                if bias is not None:
                    layer[f"{name}_b"] = bias
            self._layers.append(layer)
        self._norm = _need(w, "norm.weight")
        self._head = w.get("lm_head.weight", self._embed)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self._eps)
        return weight * x32.to(x.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return (x.float() * cos + rotated.float() * sin).to(x.dtype)

    def hidden(
        self,
        token_ids: torch.Tensor,
        plan: AttentionPlan,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        s = self.shape
        freqs = plan.positions.float()[:, None] * self._inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [T, 1, D]
        cos, sin = emb.cos(), emb.sin()
        h = self._embed[token_ids]
        scale = 1.0 / math.sqrt(s.head_dim)
        for i, L in enumerate(self._layers):
            a = self._rms(h, L["in_norm"])
            q = F.linear(a, L["q_w"], L.get("q_b")).reshape(-1, s.num_heads, s.head_dim)
            k = F.linear(a, L["k_w"], L.get("k_b")).reshape(-1, s.num_kv_heads, s.head_dim)
            v = F.linear(a, L["v_w"], L.get("v_b")).reshape(-1, s.num_kv_heads, s.head_dim)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            att = paged_attention(q, k, v, k_cache[i], v_cache[i], plan, scale)
            h = h + F.linear(att.reshape(-1, s.num_heads * s.head_dim), L["o_w"], L.get("o_b"))
            m = self._rms(h, L["post_norm"])
            h = h + F.linear(
                self._act(F.linear(m, L["gate_w"])) * F.linear(m, L["up_w"]), L["down_w"]
            )
        return self._rms(h, self._norm)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self._head)
