"""``meridian lm``: build the tiny generative model, or generate text with a model."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lm_command", required=True, metavar="ACTION")
    build = sub.add_parser("build", help="train (once) the tiny GPT-2 and print its directory")
    build.add_argument("--cache-dir", help="where models are cached (default ~/.cache/meridian)")
    gen = sub.add_parser("generate", help="generate a completion of --prompt")
    gen.add_argument("--model-dir", help="a Hugging Face model directory (default: the tiny one)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--seed", type=int)


def main(args: argparse.Namespace) -> int:
    import logging

    from worker.generation.tiny_lm import ensure_tiny_lm

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.lm_command == "build":
        print(ensure_tiny_lm(Path(args.cache_dir) if args.cache_dir else None))
        return 0
    model_dir = Path(args.model_dir) if args.model_dir else ensure_tiny_lm()
    return _generate(model_dir, args)


def _generate(model_dir: Path, args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from worker.generation.factory import open_generation_engine
    from worker.generation.settings import GenerationSettings
    from worker.generation.types import SamplingParams

    async def run() -> None:
        engine = open_generation_engine(model_dir, GenerationSettings(), name="cli")
        await engine.start()
        try:
            params = SamplingParams(
                max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
            )
            async for event in engine.generate(engine.encode(args.prompt), params, "cli"):
                sys.stdout.write(event.text)
                sys.stdout.flush()
            sys.stdout.write("\n")
        finally:
            await engine.stop()

    asyncio.run(run())
    return 0
