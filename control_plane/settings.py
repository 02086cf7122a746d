"""Configuration of the control plane (environment variables prefixed ``MERIDIAN_``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PLACEHOLDER_SECRETS", "ControlPlaneSettings"]

# values that people paste from examples; refused outside local use
PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "changethis", "secret", "password", "admin", "token", "test"}
)
MIN_SECRET_LENGTH = 16


class ControlPlaneSettings(BaseSettings):
    """Everything the control plane process needs; built once in ``main``, passed down."""

    model_config = SettingsConfigDict(env_prefix="MERIDIAN_", extra="ignore")

    environment: Literal["local", "staging", "production"] = "local"
    data_dir: Path = Path("./var")
    # SQLAlchemy URL; default: a SQLite file in data_dir. Production: postgresql+psycopg://...
    database_url: str | None = None
    # where the local artifact store keeps model files; default: data_dir/artifacts
    artifact_dir: Path | None = None
    max_artifact_bytes: int = Field(default=2 * 1024**3, gt=0)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    # an admin token ensured in the token table at start (stored as sha256)
    bootstrap_admin_token: SecretStr | None = None
    # run ``alembic upgrade head`` when the process starts
    migrate_on_start: bool = True
    # --- the fleet plane: region agents over gRPC, health, routing snapshots ---
    fleet_enabled: bool = True
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=8081, ge=0, le=65535)  # 0: any free port
    # live coordination: memory:// (one process, embedded) or etcd://host:port (HA replicas)
    coordination_url: str = "memory://"
    # how agents and workers reach this API (artifact URLs in directives)
    public_url: str | None = None
    report_interval_s: float = Field(default=1.0, gt=0)
    fleet_namespace: str = "/meridian"
    # this replica's name among the others (default: host and process id)
    replica_id: str | None = None
    # a dead leader is replaced after about this; a dead replica's summaries vanish after this
    leader_ttl_s: float = Field(default=2.0, gt=0)
    summary_ttl_s: float = Field(default=3.0, gt=0)
    # a new leader keeps silent regions' last states this long while agents reconnect
    # (None: the larger of 6 s and 3 report intervals); docs/fleet-health.md
    reconnect_grace_s: float | None = Field(default=None, ge=0)
    # the leader republishes an unchanged snapshot this often (routers' staleness)
    snapshot_refresh_s: float = Field(default=5.0, ge=0)
    # --- elastic capacity (the leader's autoscaler) ---
    autoscale_enabled: bool = True
    autoscale_target_concurrency: float = Field(default=4.0, gt=0)  # in flight + queued/worker
    autoscale_stable_window_s: float = Field(default=60.0, gt=0)
    autoscale_panic_window_s: float = Field(default=6.0, gt=0)
    autoscale_scale_down_delay_s: float = Field(default=30.0, ge=0)
    # the leader moves progressive rollouts along this often (control_plane.rollouts)
    rollout_interval_s: float = Field(default=0.5, gt=0)
    # GPUs per GPU type across all regions, e.g. {"H100": 64}; a type not named is unlimited
    gpu_budget: dict[str, int] = Field(default_factory=dict)
    # the routers' Redis (redis://host:port/db): API keys' token usage is read from it
    redis_url: str | None = None
    # --- TLS: the fleet CA's directory (``meridian ca init --dir``): agents enroll on
    # agent_enroll_port, then stream over mutual TLS; the admin API serves HTTPS ---
    tls_dir: Path | None = None
    insecure: bool = False  # plaintext listeners, explicitly (logs a warning)
    agent_enroll_port: int = Field(default=8082, ge=0, le=65535)  # 0: any free port
    agent_cert_lifetime_s: float = Field(default=3600.0, ge=60)

    @model_validator(mode="after")
    def _refuse_plaintext_outside_local_use(self) -> ControlPlaneSettings:
        if self.environment != "local" and self.tls_dir is None and not self.insecure:
            raise ValueError(
                "set MERIDIAN_TLS_DIR to the fleet CA's directory (meridian ca init), "
                "or MERIDIAN_INSECURE=true to accept plaintext listeners"
            )
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> ControlPlaneSettings:
        if self.bootstrap_admin_token is None:
            return self
        value = self.bootstrap_admin_token.get_secret_value()
        weak = value.strip().lower() in PLACEHOLDER_SECRETS or len(value) < MIN_SECRET_LENGTH
        if not weak:
            return self
        message = (
            "MERIDIAN_BOOTSTRAP_ADMIN_TOKEN is a placeholder or shorter than "
            f"{MIN_SECRET_LENGTH} characters; set a random value "
            '(python3 -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
        if self.environment == "local":
            warnings.warn(message, stacklevel=2)
            return self
        raise ValueError(message)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'meridian.sqlite').resolve()}"

    @property
    def resolved_public_url(self) -> str:
        scheme = "https" if self.tls_dir is not None else "http"  # TLS: the admin API is HTTPS
        return (self.public_url or f"{scheme}://{self.http_host}:{self.http_port}").rstrip("/")

    @property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()
