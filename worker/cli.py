"""``meridian worker``: serve models over OIP v2 REST and gRPC in one process."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--http-port", "--port", type=int, help="REST port (default 8000)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; -1 disables)")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME[:VERSION[:VARIANT]]=SOURCE",
        help="serve from start-up (repeatable): SOURCE is a local .onnx/TorchScript file, a "
        "generative model's folder (Hugging Face checkpoint), or an artifact URL with "
        "'#sha256=HEX' (token in MERIDIAN_WORKER_ARTIFACT_TOKEN; a .tar/.tar.gz URL is a "
        "generative model's folder); '#format=...' (or '&format=...') names the format",
    )
    parser.add_argument("--max-batch-size", type=int, help="rows per engine run (default 64)")
    parser.add_argument("--max-queue-delay-ms", type=float, help="batch fill wait (default 2)")
    parser.add_argument("--max-queue-size", type=int, help="queued requests per model (256)")
    parser.add_argument("--max-request-bytes", type=int, help="request body limit (64 MiB)")
    parser.add_argument("--engine-threads", type=int, help="intra-op threads per engine")
    parser.add_argument("--cache-dir", help="artifact cache folder")
    gen = parser.add_argument_group("generative models")
    gen.add_argument("--kv-cache-tokens", type=int, help="KV cache budget in tokens per model")
    gen.add_argument("--block-size", type=int, help="tokens per KV cache block (16)")
    gen.add_argument("--max-num-seqs", type=int, help="sequences batched at once (64)")
    gen.add_argument("--max-batched-tokens", type=int, help="tokens per engine step (1024)")
    gen.add_argument("--max-model-len", type=int, help="prompt plus completion tokens, at most")
    gen.add_argument(
        "--no-prefix-caching",
        dest="prefix_caching",
        action="store_false",
        default=None,
        help="compute every prompt in full (no reuse of cached prefixes)",
    )
    parser.add_argument(
        "--allow-local-paths",
        action="store_true",
        default=None,
        help="let the load API read local files (development)",
    )


def main(args: argparse.Namespace) -> int:
    import logging

    from worker.app import ModelSpec, serve
    from worker.settings import WorkerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "http_port": args.http_port,
            "grpc_port": args.grpc_port,
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_ms": args.max_queue_delay_ms,
            "max_queue_size": args.max_queue_size,
            "engine_threads": args.engine_threads,
            "max_request_bytes": args.max_request_bytes,
            "cache_dir": args.cache_dir,
            "allow_local_paths": args.allow_local_paths,
            "kv_cache_tokens": args.kv_cache_tokens,
            "block_size": args.block_size,
            "max_num_seqs": args.max_num_seqs,
            "max_batched_tokens": args.max_batched_tokens,
            "max_model_len": args.max_model_len,
            "prefix_caching": args.prefix_caching,
        }.items()
        if value is not None
    }
    if overrides.get("grpc_port") == -1:
        overrides["grpc_port"] = None
    settings = WorkerSettings(**overrides)
    try:
        models = [ModelSpec.parse(m) for m in args.model]
    except ValueError as exc:
        print(f"meridian worker: {exc}")
        return 2
    serve(settings, models)
    return 0
