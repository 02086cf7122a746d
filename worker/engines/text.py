"""Text in, embeddings out: a tokenizer in front of an ONNX sentence encoder.

An ONNX model whose metadata carries ``meridian.tokenizer`` (a ``tokenizers``
JSON document, see ``worker.minilm``) takes token ids and an attention mask; this
engine shows it to clients as one ``text`` input of OIP datatype BYTES (UTF-8
strings, one per row) and one ``embedding`` output. Tokenizing happens in the
worker thread with the model run, so it is batched with it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from meridian.errors import InvalidInput
from worker.engines.onnx import OnnxEngine
from worker.tensors import TensorSpec

__all__ = ["TOKENIZER_KEY", "TextEmbeddingEngine"]

TOKENIZER_KEY = "meridian.tokenizer"
MAX_TOKENS_KEY = "meridian.max_tokens"
TEXT_INPUT = "text"


class TextEmbeddingEngine:
    platform = "onnxruntime_onnx"

    def __init__(self, inner: OnnxEngine) -> None:
        from tokenizers import Tokenizer

        self._inner = inner
        metadata = inner.metadata
        names = {s.name for s in self._inner.inputs}
        if not {"input_ids", "attention_mask"} <= names:
            raise InvalidInput("a text model needs 'input_ids' and 'attention_mask' inputs")
        self._tokenizer = Tokenizer.from_str(metadata[TOKENIZER_KEY])
        self._tokenizer.enable_truncation(int(metadata.get(MAX_TOKENS_KEY, "256")))
        self._tokenizer.enable_padding()
        self.device = self._inner.device
        self.inputs = [TensorSpec(TEXT_INPUT, "BYTES", (-1,))]
        self.outputs = self._inner.outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = inputs[TEXT_INPUT].reshape(-1)
        try:
            decoded = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"tensor '{TEXT_INPUT}': not UTF-8 text ({exc})") from None
        encodings = self._tokenizer.encode_batch(decoded)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return self._inner.run({"input_ids": ids, "attention_mask": mask})

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens in ``texts`` as the model sees them (padding not counted)."""
        return sum(sum(e.attention_mask) for e in self._tokenizer.encode_batch(texts))

    def close(self) -> None:
        self._inner.close()
