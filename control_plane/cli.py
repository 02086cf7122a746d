"""``meridian control-plane``: run one control-plane replica (embedded SQLite by default).

The one way to run a replica: the admin API and, unless ``MERIDIAN_FLEET_ENABLED=false``,
the fleet plane (agents' gRPC, health, routing snapshots, autoscaler). HA replicas share
one PostgreSQL database (``--database-url``) and etcd (``--coordination etcd://host:port``).
"""

from __future__ import annotations

import argparse
from typing import Any

INITIAL_TOKEN_NAME = "initial-admin"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default: MERIDIAN_HTTP_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (MERIDIAN_HTTP_PORT, 8080)")
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (default: a SQLite file in the data dir; "
        "production: postgresql+psycopg://...)",
    )
    parser.add_argument("--data-dir", help="where the SQLite file and artifacts live (./var)")
    parser.add_argument(
        "--grpc-port", type=int, help="agents' gRPC port (MERIDIAN_GRPC_PORT, 8081)"
    )
    parser.add_argument(
        "--coordination",
        help="memory:// (one process) or etcd://host:port (MERIDIAN_COORDINATION_URL)",
    )
    parser.add_argument("--public-url", help="how agents and workers reach this API")
    parser.add_argument("--replica-id", help="this replica's name (default: host and pid)")
    parser.add_argument("--fleet-namespace", help="root of the coordination keys (/meridian)")
    parser.add_argument("--report-interval", type=float, help="agents' report interval, s (1)")
    parser.add_argument("--leader-ttl", type=float, help="a dead leader is replaced after (2 s)")
    parser.add_argument("--summary-ttl", type=float, help="dead replicas' summaries live (3 s)")
    parser.add_argument(
        "--reconnect-grace", type=float, help="a new leader keeps silent regions' states (6 s+)"
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    parser.add_argument(
        "--tls-dir",
        help="the fleet CA's directory (meridian ca init; MERIDIAN_TLS_DIR): HTTPS for the "
        "admin API, mutual TLS for agents",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve plaintext (MERIDIAN_INSECURE); logs a warning",
    )


def settings_from_args(args: argparse.Namespace) -> Any:
    from control_plane.settings import ControlPlaneSettings

    overrides: dict[str, Any] = {}
    for arg, field in (
        ("host", "http_host"),
        ("port", "http_port"),
        ("database_url", "database_url"),
        ("data_dir", "data_dir"),
        ("grpc_port", "grpc_port"),
        ("coordination", "coordination_url"),
        ("public_url", "public_url"),
        ("replica_id", "replica_id"),
        ("fleet_namespace", "fleet_namespace"),
        ("report_interval", "report_interval_s"),
        ("leader_ttl", "leader_ttl_s"),
        ("summary_ttl", "summary_ttl_s"),
        ("reconnect_grace", "reconnect_grace_s"),
        ("tls_dir", "tls_dir"),
        ("insecure", "insecure"),
    ):
        value = getattr(args, arg, None)
        if value is not None:
            overrides[field] = value
    return ControlPlaneSettings(**overrides)


def admin_tls_files(settings: Any) -> dict[str, Any]:
    """uvicorn's ssl arguments: a fresh admin certificate from the fleet CA in
    ``settings.tls_dir``; none (plaintext, with a warning) without a CA."""
    import datetime as dt
    import logging

    if settings.tls_dir is None:
        logging.getLogger("control_plane").warning(
            "the admin API serves PLAINTEXT HTTP (%s); set MERIDIAN_TLS_DIR for HTTPS",
            "--insecure" if settings.insecure else "no MERIDIAN_TLS_DIR in local use",
        )
        return {}
    from pathlib import Path

    from meridian.pki import CertificateAuthority, Role
    from meridian.pki.files import write_issued

    ca = CertificateAuthority.load(Path(settings.tls_dir))
    hosts = sorted({"127.0.0.1", "localhost", settings.http_host} - {"0.0.0.0", "::"})
    files = write_issued(
        ca, Role.ADMIN, Path(settings.data_dir) / "tls", name="admin", hosts=hosts,
        lifetime=dt.timedelta(days=30),
    )  # fmt: skip
    return {"ssl_certfile": str(files.cert), "ssl_keyfile": str(files.key)}


def _server(config: Any, console: Any) -> Any:
    """uvicorn's server, which also ends the consoles' event streams when told to stop
    (it would otherwise wait for those open responses to finish)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if console is not None:
                console.end_streams_soon()
            super().handle_exit(sig, frame)

    return Server(config)


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from control_plane.app import create_app, open_registry, prepare
    from control_plane.schemas import TokenCreate

    settings = settings_from_args(args)
    registry = open_registry(settings)
    try:
        prepare(settings, registry)
        ssl = admin_tls_files(settings)
        scheme = "https" if ssl else "http"
        url = f"{scheme}://{settings.http_host}:{settings.http_port}"
        print(f"Meridian control plane: {url}  (admin API under {url}/v1, docs at {url}/docs)")
        if settings.fleet_enabled:
            print(f"operator console: {url}/ui (sign in with an admin or read token)")
        print(f"database: {settings.resolved_database_url}")
        if settings.fleet_enabled:
            print(f"region agents connect to {settings.grpc_host}:{settings.grpc_port} (gRPC)")
            if ssl:
                print(f"  over mutual TLS; they enroll on port {settings.agent_enroll_port}")
        if not registry.has_active_admin_token():
            created = registry.create_token(
                TokenCreate(name=INITIAL_TOKEN_NAME, scopes=["admin"]), actor="control-plane"
            )
            print("no admin token existed, so one was created; it is shown only this once:")
            print(f"admin token: {created.token}")
            print(f"  try: curl -H 'Authorization: Bearer {created.token}' {url}/v1/models")
        print("", flush=True)
        app = create_app(settings, registry=registry)
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_level=args.log_level,
            **ssl,
        )
        _server(config, getattr(app.state, "console", None)).run()
    finally:
        registry.close()
    return 0
