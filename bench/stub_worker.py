"""A backend that answers OIP v2 infer requests at once (for measuring proxies).

``python -m bench.stub_worker --port N``. It answers every request with a fixed
small OIP response, so that a proxy in front of it, not the backend, is what a
load test measures.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson

from router.http11 import HttpServer, Request, Response

BODY = orjson.dumps(
    {
        "model_name": "mlp",
        "model_version": "1",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}
        ],
    }
)


async def _handle(req: Request) -> Response:
    return Response(200, BODY, [(b"content-type", b"application/json")])


async def _serve(port: int) -> None:
    server = HttpServer(_handle)
    await server.start("127.0.0.1", port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    import uvloop

    uvloop.run(_serve(p.parse_args().port))


if __name__ == "__main__":
    main()
