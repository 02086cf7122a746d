"""Run one control-plane replica's fleet plane: agent gRPC + the fleet REST routes.

``python3 -m control_plane.fleet_main --db URL --etcd host:port --grpc-port N --http-port N``

The database must already hold the registry's schema. Besides the fleet routes
it serves ``GET /v1/fleet/status`` (this replica's id, whether it leads, its
ports). With ``--admin-token`` the drain routes require ``Authorization: Bearer``;
reads are open, as for routers on a private network.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException

from control_plane.agent_tls import add_tls_arguments, tls_from_args  # mutual TLS for agents


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="control_plane.fleet_main", description=__doc__.splitlines()[0]
    )
    p.add_argument("--db", required=True, help="SQLAlchemy URL of the registry database")
    p.add_argument("--etcd", default="", help="etcd host:port (default: in-process coordination)")
    p.add_argument("--grpc-host", default="127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=0)
    p.add_argument("--http-host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=0)
    p.add_argument("--replica-id", default="")
    p.add_argument("--report-interval", type=float, default=1.0)
    p.add_argument("--leader-ttl", type=float, default=2.0)
    p.add_argument("--summary-ttl", type=float, default=3.0)
    p.add_argument(
        "--reconnect-grace",
        type=float,
        default=None,
        help="seconds a new leader keeps silent regions' last states (default: 6 s or more)",
    )
    p.add_argument("--admin-token", default="")
    p.add_argument("--namespace", default="/meridian", help="root of the coordination keys")
    p.add_argument("--log-level", default="INFO")
    add_tls_arguments(p)  # mutual TLS for agents (control_plane.agent_tls)
    return p


async def serve(args: argparse.Namespace) -> int:
    import sqlalchemy as sa
    import uvicorn
    from sqlalchemy.orm import sessionmaker

    from control_plane.api_fleet import fleet_router
    from control_plane.fleet import FleetRuntime, FleetSettings
    from meridian.coordination import open_coordination

    engine = sa.create_engine(args.db, pool_pre_ping=True)
    coord = open_coordination(f"etcd://{args.etcd}" if args.etcd else "memory://")
    settings_kwargs: dict[str, object] = {
        "grpc_host": args.grpc_host,
        "grpc_port": args.grpc_port,
        "report_interval_s": args.report_interval,
        "leader_ttl_s": args.leader_ttl,
        "summary_ttl_s": args.summary_ttl,
        "namespace": args.namespace,
        "tls": tls_from_args(args),  # mutual TLS for agents (control_plane.agent_tls)
    }
    if args.reconnect_grace is not None:
        settings_kwargs["reconnect_grace_s"] = args.reconnect_grace
    if args.replica_id:
        settings_kwargs["replica_id"] = args.replica_id
    runtime = FleetRuntime.with_sql(
        FleetSettings(**settings_kwargs),  # type: ignore[arg-type]
        sessionmaker(engine, expire_on_commit=False),
        coord,
    )

    def read_auth() -> None:
        return None

    def admin_auth(authorization: Annotated[str | None, Header()] = None) -> str:
        if not args.admin_token:
            return "operator"
        presented = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), args.admin_token.encode()):
            raise HTTPException(401, "a valid admin bearer token is required")
        return "admin"

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            await coord.close()
            engine.dispose()

    app = FastAPI(title="Meridian fleet plane", lifespan=lifespan)
    app.include_router(
        fleet_router(
            runtime.feed,
            runtime.fleet_view,
            runtime.set_draining,
            read_auth=read_auth,
            admin_auth=admin_auth,
        )
    )

    @app.get("/v1/fleet/status")
    async def status() -> dict[str, object]:
        return {
            "replica": runtime.settings.replica_id,
            "leader": runtime.leadership.is_leader,
            "grpc_port": runtime.grpc_port,
            "enroll_port": runtime.enroll_port,  # mutual TLS for agents
            "snapshot_version": runtime.feed.version,
            "agent_streams": runtime.servicer.streams,
        }

    config = uvicorn.Config(
        app, host=args.http_host, port=args.http_port, log_level=args.log_level.lower()
    )
    await uvicorn.Server(config).serve()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
