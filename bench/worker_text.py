"""Worker benchmark on the model Meridian's demo serves: all-MiniLM-L6-v2 (int8), text in.

``python -m bench.worker_text [--quick]``. Side by side in one run, on the same machine:
(a) raw: the text engine (tokenizer + ONNX Runtime) at several batch sizes, the ceiling;
(b) the worker with dynamic batching, OIP v2 REST (BYTES tensors), closed-loop
concurrency 1, 16 and 64; (c) a naive FastAPI endpoint embedding each request's text as
it arrives. Each request is one sentence. Needs the ``demo`` extra (the packaged model).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.report import parse_args, record, table
from bench.worker import free_port, load, load_worker, server

TEXT = "Latency is network distance plus queueing plus service time."


def raw_text_engine(path: Path, threads: int, seconds: float) -> dict[int, float]:
    from worker.engines.base import open_engine

    engine = open_engine(path, "onnx", threads=threads, use_gpu=False)
    out: dict[int, float] = {}
    try:
        for batch in (1, 8, 32, 64):
            texts = np.array([TEXT.encode()] * batch, dtype=object)
            engine.run({"text": texts})
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                engine.run({"text": texts})
                n += 1
            out[batch] = n * batch / (time.perf_counter() - start)
    finally:
        engine.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    from demo.model import prepare

    model = prepare().int8
    threads = os.cpu_count() or 1
    # the worker leaves a core to its event loop (HTTP, decoding, batching) when it can
    worker_threads = max(1, threads - 1)
    seconds, raw_seconds = (4.0, 1.5) if args.quick else (10.0, 4.0)
    concurrency = (1, 16, 64)
    raw = raw_text_engine(model, threads, raw_seconds)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker_cmd = [
        sys.executable, "-m", "meridian", "worker", "--http-port", str(port), "--grpc-port",
        "-1", "--model", f"minilm:1={model}", "--max-batch-size", "64",
        "--max-queue-delay-ms", "2", "--max-queue-size", "1024",
        "--engine-threads", str(worker_threads),
    ]  # fmt: skip
    worker: dict[int, dict[str, float]] = {}
    with server(worker_cmd, f"{base}/v2/health/ready") as proc:
        for c in concurrency:
            worker[c] = load_worker(
                base, "/v2/models/minilm/infer", "minilm:1", proc, "text", c, seconds, 0
            )
    mean_batch = worker[64]["mean_batch"]

    port = free_port()
    naive_cmd = [
        sys.executable, "-m", "bench._naive_server", "--port", str(port), "--model", str(model),
        "--threads", str(threads), "--text",
    ]  # fmt: skip
    naive: dict[int, dict[str, float]] = {}
    with server(naive_cmd, f"http://127.0.0.1:{port}/docs"):
        for c in concurrency:
            naive[c] = load(f"http://127.0.0.1:{port}/infer", "naive-text", c, seconds, 0)
    after = raw_text_engine(model, threads, raw_seconds)
    raw = {b: max(r, after[b]) for b, r in raw.items()}

    best_batch = max(raw, key=lambda b: raw[b])
    best = raw[best_batch]
    rows = [["raw engine", f"batch {b}", r, "", ""] for b, r in raw.items()]
    for name, results in (("worker", worker), ("naive", naive)):
        for c, res in results.items():
            rows.append([name, f"c={c}", res["rps"], res["p50_ms"], res["p99_ms"]])
    w64, n64 = worker[64]["rps"], naive[64]["rps"]
    body = (
        f"all-MiniLM-L6-v2 int8 (ONNX Runtime, {threads} threads), one sentence per request.\n\n"
        + table(["path", "load", "texts/s", "p50 ms", "p99 ms"], rows)
        + f"\n\nAt concurrency 64 the worker serves {w64 / best:.2f}x the raw engine's best rate "
        f"(batch {best_batch}) and {w64 / n64:.2f}x the naive endpoint "
        f"(mean batch {mean_batch:.1f} rows). The engine alone gains "
        f"{best / raw[1]:.1f}x from batching here; on {threads} shared cores the worker's "
        "event loop (HTTP, decoding) competes with the engine's threads and the load "
        "generator."
    )
    figures = {
        "text_raw_best_per_s": round(best),
        "text_raw_batch1_per_s": round(raw[1]),
        "text_worker_c1_per_s": round(worker[1]["rps"]),
        "text_worker_c64_per_s": round(w64),
        "text_naive_c64_per_s": round(n64),
        "text_worker_vs_raw_c64": round(w64 / best, 3),
        "text_worker_vs_naive_c64": round(w64 / n64, 2),
        "text_worker_c64_p99_ms": round(worker[64]["p99_ms"], 1),
        "text_worker_c64_mean_batch_rows": round(mean_batch, 1),
    }
    record(
        "worker_text",
        "Worker on the served text model (bench.worker_text)",
        body,
        figures,
        quick=args.quick,
        write=not args.no_write,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
