"""A tiny text-embedding model in the same shape as all-MiniLM: token ids in, pooled
vectors out, with its tokenizer carried in the ONNX metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = ["hello", "world", "fast", "inference", "across", "regions"]
DIM = 4


def build_text_model(path: Path) -> np.ndarray:
    """Write the model to ``path``; return its embedding table (row per token id)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    table = np.random.default_rng(7).standard_normal((len(vocab), DIM)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["vectors"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
        helper.make_node("Mul", ["vectors", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "one"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "one"], ["count"], keepdims=1),
        helper.make_node("Div", ["summed", "count"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM])],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "last"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "meridian.tokenizer", tokenizer.to_str()
    onnx.save(model, str(path))
    return table


def reference(table: np.ndarray, text: str) -> np.ndarray:
    ids = [WORDS.index(w) + 2 if w in WORDS else 1 for w in text.split()]
    return np.asarray(table[ids].mean(axis=0))
