"""The naive baseline for ``bench.worker``: a FastAPI endpoint that runs the
model on each request as it arrives (no batching), served by the same uvicorn
(uvloop, httptools) as the worker."""

from __future__ import annotations

import argparse
import sys

import numpy as np
from fastapi import FastAPI, Request, Response


def create_app(model: str, threads: int) -> FastAPI:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Same engine settings as the worker, so the comparison is about batching.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    width = session.get_inputs()[0].shape[1]
    app = FastAPI()

    @app.post("/infer")
    async def infer(request: Request) -> Response:
        x = np.frombuffer(await request.body(), dtype=np.float32).reshape(-1, width)
        y = session.run(None, {"input": x})[0]
        return Response(y.tobytes(), media_type="application/octet-stream")

    return app


def create_text_app(model: str, threads: int) -> FastAPI:
    """The same for a text model: tokenize and embed each request's text as it arrives."""
    from pathlib import Path

    from worker.engines.base import open_engine

    engine = open_engine(Path(model), "onnx", threads=threads, use_gpu=False)
    app = FastAPI()

    @app.post("/infer")
    async def infer(request: Request) -> Response:
        text = np.array([await request.body()], dtype=object)
        y = engine.run({"text": text})["embedding"]
        return Response(y.tobytes(), media_type="application/octet-stream")

    return app


def main() -> int:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--text", action="store_true", help="the model takes text (BYTES)")
    args = p.parse_args()
    factory = create_text_app if args.text else create_app
    uvicorn.run(
        factory(args.model, args.threads),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
