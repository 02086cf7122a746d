"""The common Python pattern, for comparison: FastAPI + httpx forwarding each request.

``python -m bench.naive_proxy --port N --upstream http://127.0.0.1:M``
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response


def create_app(upstream: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.client = httpx.AsyncClient(base_url=upstream, timeout=10.0)
        yield
        await app.state.client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        body = await request.body()
        r = await request.app.state.client.post(
            f"/v2/models/{model}/infer",
            content=body,
            headers={"content-type": request.headers.get("content-type", "application/json")},
        )
        return Response(r.content, status_code=r.status_code, media_type="application/json")

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    args = p.parse_args()
    uvicorn.run(create_app(args.upstream), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
