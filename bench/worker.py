"""Worker benchmark: dynamic batching over HTTP vs the raw engine and a naive server.

One model (a CPU MLP, about 2.7 MFLOP per row) on one machine, in one run:

(a) raw: onnxruntime ``session.run`` in a loop at several batch sizes; its best
    rows/s is the ceiling nothing over HTTP can beat;
(b) worker: ``meridian worker`` with dynamic batching, OIP v2 REST with binary
    tensors, under closed-loop concurrency 1, 16 and 64;
(c) naive: a FastAPI endpoint under uvicorn that runs the model per request, no
    batching, same load.

The load generator is a separate process (an asyncio protocol, keep-alive), so its
CPU is not charged to the server -- but on a small machine it still competes with
the server and the engine for the same cores.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.report import parse_args, record, table
from meridian.net import free_port

ROOT = Path(__file__).resolve().parent.parent
DIMS = (256, 1024, 1024, 16)
# A second, heavier model: more engine work per row relative to HTTP work.
HEAVY_DIMS = (512, 2048, 2048, 16)
CONCURRENCY = (1, 16, 64)


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


def raw_engine(path: Path, width: int, threads: int, seconds: float) -> dict[int, float]:
    """rows/s of session.run at each batch size."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out: dict[int, float] = {}
    for batch in (1, 8, 32, 64, 128):
        x = np.random.default_rng(batch).standard_normal((batch, width)).astype(np.float32)
        session.run(None, {"input": x})
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, {"input": x})
            n += 1
        out[batch] = n * batch / (time.perf_counter() - start)
    return out


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


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user and system, all threads) process ``pid`` has used; None
    where ``/proc`` cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    url: str,
    mode: str,
    concurrency: int,
    seconds: float,
    width: int,
    server_pid: int | None = None,
) -> dict[str, float]:
    """Run the load generator once: requests/s and latency, and the CPU per request
    of the client and (given its pid) the server, warm-up included."""
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
        str(width),
    ]
    server_before = process_cpu_s(server_pid) if server_pid is not None else None
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    server_after = process_cpu_s(server_pid) if server_pid is not None else None
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    result["rps"] = result["requests"] / result["elapsed_s"]
    answered = max(1.0, result["answered"])
    result["client_cpu_us"] = 1e6 * result["cpu_s"] / answered
    if server_before is not None and server_after is not None:
        result["server_cpu_us"] = 1e6 * (server_after - server_before) / answered
    return result


def batch_counts(stats_url: str, label: str) -> tuple[int, int]:
    """Batches run and rows served so far by model ``label``, from ``/v2/stats``."""
    import httpx

    model = httpx.get(stats_url).json()["models"][label]
    return int(model["batches"]), int(model["rows"])


def load_worker(
    base: str,
    path: str,
    label: str,
    proc: subprocess.Popen[bytes],
    mode: str,
    concurrency: int,
    seconds: float,
    width: int,
) -> dict[str, float]:
    """:func:`load` on a worker, adding the mean batch (rows) of this run alone."""
    batches, rows = batch_counts(f"{base}/v2/stats", label)
    result = load(f"{base}{path}", mode, concurrency, seconds, width, proc.pid)
    batches_after, rows_after = batch_counts(f"{base}/v2/stats", label)
    result["mean_batch"] = (rows_after - rows) / max(1, batches_after - batches)
    return result


@dataclass
class Scenario:
    dims: tuple[int, ...]
    mflop: float
    raw: dict[int, float]
    worker: dict[int, dict[str, float]]
    naive: dict[int, dict[str, float]]

    @property
    def raw_best(self) -> tuple[int, float]:
        batch = max(self.raw, key=lambda b: self.raw[b])
        return batch, self.raw[batch]


def run_scenario(
    directory: Path,
    dims: tuple[int, ...],
    concurrency: Sequence[int],
    seconds: float,
    raw_seconds: float,
    threads: int,
) -> Scenario:
    """Raw engine, worker and naive server on one model; the raw ceiling is
    measured before and after the servers and the better figure kept, so a busy
    moment on a shared machine does not flatter the worker."""
    model = directory / f"mlp-{'x'.join(map(str, dims))}.onnx"
    mflop = build_mlp(model, dims)
    width = dims[0]
    raw = raw_engine(model, width, threads, raw_seconds)

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
    with server(worker_cmd, f"{base}/v2/health/ready") as proc:
        for c in concurrency:
            worker[c] = load_worker(
                base, "/v2/models/mlp/infer", "mlp:1", proc, "oip", c, seconds, width
            )

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
    with server(naive_cmd, f"http://127.0.0.1:{port}/docs") as proc:
        for c in concurrency:
            naive[c] = load(f"http://127.0.0.1:{port}/infer", "naive", c, seconds, width, proc.pid)

    after = raw_engine(model, width, threads, raw_seconds)
    raw = {b: max(r, after[b]) for b, r in raw.items()}
    return Scenario(dims, mflop, raw, worker, naive)


def cpu_sentence(
    worker: dict[str, float], naive: dict[str, float], raw_best: float, threads: int
) -> str:
    """What one request costs in CPU at c=64, and the rate that allows on these cores."""
    if "server_cpu_us" not in worker or "server_cpu_us" not in naive:
        return ""
    per_request = worker["server_cpu_us"] + worker["client_cpu_us"]
    bound = threads * 1e6 / per_request
    limit = "its per-request CPU, not the engine" if bound < raw_best else "the engine"
    return (
        f"At c=64 a one-row request cost the worker process {worker['server_cpu_us']:.0f} us "
        "of CPU in all (HTTP, decoding, batching and its share of the engine's runs) and the "
        f"load generator {worker['client_cpu_us']:.0f} us; the naive server "
        f"{naive['server_cpu_us']:.0f} us (client {naive['client_cpu_us']:.0f} us). "
        f"The raw engine at its best takes {1e6 / raw_best:.0f} us of wall time per row with "
        f"the machine to itself; at {per_request:.0f} us of CPU per request, server and "
        f"client together, {threads} cores allow at most about {bound:,.0f} requests/s, "
        f"so what bounds the worker here is {limit}."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    seconds = 2.5 if args.quick else 10.0
    raw_seconds = 0.4 if args.quick else 2.0
    threads = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        main_run = run_scenario(Path(tmp), DIMS, CONCURRENCY, seconds, raw_seconds, threads)
        heavy = run_scenario(Path(tmp), HEAVY_DIMS, (64,), seconds, raw_seconds, threads)

    rows: list[list[object]] = []
    for sc in (main_run, heavy):
        name = f"{sc.mflop:.1f} MFLOP/row"
        rows += [[name, "raw engine", f"batch {b}", r, "-", "-"] for b, r in sc.raw.items()]
        for kind, runs in (("worker", sc.worker), ("naive", sc.naive)):
            for c, r in runs.items():
                rows.append([name, kind, f"c={c}", r["rps"], r["p50_ms"], r["p99_ms"]])

    best_batch, raw_best = main_run.raw_best
    w64, n64 = main_run.worker[64]["rps"], main_run.naive[64]["rps"]
    heavy_batch, heavy_best = heavy.raw_best
    hw, hn = heavy.worker[64]["rps"], heavy.naive[64]["rps"]
    figures: dict[str, float | int | str] = {
        "worker_mlp_mflop_per_row": round(main_run.mflop, 2),
        "worker_raw_best_rows_per_s": round(raw_best),
        "worker_raw_best_batch": best_batch,
        "worker_raw_batch1_rows_per_s": round(main_run.raw[1]),
    }
    for c in CONCURRENCY:
        w, n = main_run.worker[c], main_run.naive[c]
        figures[f"worker_c{c}_rows_per_s"] = round(w["rps"])
        figures[f"worker_c{c}_p50_ms"] = round(w["p50_ms"], 2)
        figures[f"worker_c{c}_p99_ms"] = round(w["p99_ms"], 2)
        figures[f"naive_c{c}_rows_per_s"] = round(n["rps"])
        figures[f"naive_c{c}_p50_ms"] = round(n["p50_ms"], 2)
        figures[f"naive_c{c}_p99_ms"] = round(n["p99_ms"], 2)
    w64_run, n64_run = main_run.worker[64], main_run.naive[64]
    figures["worker_c64_mean_batch_rows"] = round(w64_run["mean_batch"], 1)
    for key, run in (("worker_c64", w64_run), ("naive_c64", n64_run)):
        if "server_cpu_us" in run:
            figures[f"{key}_server_cpu_us_per_request"] = round(run["server_cpu_us"])
        figures[f"{key}_client_cpu_us_per_request"] = round(run["client_cpu_us"])
    figures["worker_vs_raw_c64"] = round(w64 / raw_best, 3)
    figures["worker_vs_naive_c64"] = round(w64 / n64, 2)
    figures["heavy_mlp_mflop_per_row"] = round(heavy.mflop, 2)
    figures["heavy_raw_best_rows_per_s"] = round(heavy_best)
    figures["heavy_worker_c64_rows_per_s"] = round(hw)
    figures["heavy_naive_c64_rows_per_s"] = round(hn)
    figures["heavy_worker_c64_mean_batch_rows"] = round(heavy.worker[64]["mean_batch"], 1)
    figures["heavy_worker_vs_raw_c64"] = round(hw / heavy_best, 3)
    figures["heavy_worker_vs_naive_c64"] = round(hw / hn, 2)
    all_runs = [
        *main_run.worker.values(),
        *main_run.naive.values(),
        *heavy.worker.values(),
        *heavy.naive.values(),
    ]
    figures["errors"] = int(sum(r["errors"] for r in all_runs))
    verdict = ", ".join(
        f"{label} {ratio:.2f} {'met' if ratio >= target else 'missed'}"
        for label, ratio, target in (
            ("worker/raw", w64 / raw_best, 0.9),
            ("worker/naive", w64 / n64, 5.0),
        )
    )
    body = "\n".join(
        [
            f"Models: ONNX MLPs {' -> '.join(map(str, DIMS))} ({main_run.mflop:.2f} MFLOP per "
            f"row) and {' -> '.join(map(str, HEAVY_DIMS))} ({heavy.mflop:.2f} MFLOP per row); "
            f"onnxruntime CPU, {threads} intra-op threads, servers without idle spinning. "
            "Worker: OIP v2 REST with binary tensors, max batch 64, fill wait up to 2 ms. "
            "Naive: FastAPI endpoint running the model per request. One row per request; "
            "closed-loop keep-alive clients in a separate process.",
            "",
            table(["model", "what", "load", "rows/s", "p50 ms", "p99 ms"], rows),
            "",
            f"At concurrency 64 the worker serves {w64 / raw_best:.2f}x the raw engine's best "
            f"rate (batch {best_batch}) and {w64 / n64:.1f}x the naive server (mean batch "
            f"{w64_run['mean_batch']:.1f} rows). On the heavier model: {hw / heavy_best:.2f}x "
            f"raw (batch {heavy_batch}) and {hw / hn:.1f}x naive (mean batch "
            f"{heavy.worker[64]['mean_batch']:.1f}).",
            "",
            f"Reading this honestly: the machine has {threads} cores, shared by the load "
            "generator, the HTTP stack and the engine (and, while this ran, by other work, "
            "so figures move by tens of percent between runs). "
            + cpu_sentence(w64_run, n64_run, raw_best, threads)
            + f" Targets at c=64 (0.9x raw, 5x naive): {verdict}. "
            f"On the heavier model (four times the engine work per row) batches fill to "
            f"{heavy.worker[64]['mean_batch']:.1f} rows and the worker serves {hw / hn:.1f}x "
            f"the naive server and {hw / heavy_best:.2f}x the raw ceiling. "
            f"Load average (1 min) at start and end of the run: {load_before:.1f}, "
            f"{os.getloadavg()[0]:.1f}.",
            "",
            "Tuning during development (small model, quick runs, c=64): the first version "
            "served 506 rows/s (1.9x naive, p50 at c=1 9.9 ms). Inference as a plain ASGI "
            "handler instead of a framework route, and no idle spinning of the engine's "
            "threads, doubled the server's rate under the same client; the batch fill wait "
            "now follows the last batch's size, so a lone client is answered at once (p50 "
            "at c=1 about 1 ms); scrape-time gauges and batch-level counters took metric "
            "updates off the per-request path; a lean load generator (now an asyncio "
            "protocol, about 15 us of CPU per request) left the server more of the shared "
            "CPU. Then, measured as medians of alternating runs under one client on a busy "
            "machine: the worker's own HTTP/1.1 server with inference answered from the "
            "batch's completion callback (no task per request), binary headers decoded once "
            "per shape, a batcher driven by events that starts the next batch as the engine "
            "finishes, and metrics recorded per batch took the server's CPU per request at "
            "c=64 from about 215 to 105 us (event loop 162 to 60 us) and its rate from 4,100 "
            "to 9,300 rows/s (c=1 p50 0.52 to 0.39 ms).",
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
