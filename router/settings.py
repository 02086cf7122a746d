"""Router settings (environment prefix ``MERIDIAN_ROUTER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["RouterSettings"]


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MERIDIAN_ROUTER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8443
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # TLS to workers: the router's client certificate from the fleet CA, and the CA
    # (workers refuse inference from anyone else); unset: plaintext to workers
    worker_tls_cert: Path | None = None
    worker_tls_key: Path | None = None
    fleet_ca: Path | None = None
    # where the routing snapshot comes from
    control_plane_urls: list[str] = Field(default_factory=list)
    control_plane_token: str = ""
    # how often this router reports its requests per client area and region to the control
    # plane (the console's map; 0: never), and under which name (default: host and port)
    traffic_report_s: float = Field(default=2.0, ge=0)
    name: str = Field(default="", max_length=128, pattern=r"^([A-Za-z0-9][A-Za-z0-9_.:-]*)?$")
    # etcd://host:port to watch the snapshot key (with the control plane's long-poll as well
    # or instead); memory:// only makes sense inside one process (tests)
    coordination_url: str = ""
    snapshot_key: str = "/meridian/routing/snapshot"
    snapshot_path: Path = Path("var/router/snapshot.json")
    # end users' API keys (followed only when required): key in etcd, file on disk
    # (default: beside the snapshot, ``<snapshot>.api-keys.json``)
    keyring_key: str = "/meridian/routing/api-keys"
    keyring_path: Path | None = None
    # client location
    default_location: tuple[float, float] = (50.1, 8.7)
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    geoip_path: str | None = None
    # end-user keys and limits
    # require an API key issued through the admin API (/v1/api-keys) on model requests
    require_api_key: bool = False
    redis_url: str | None = None
    anonymous_rate: float = 0.0  # requests/s per client address when no key is required; 0 = off
    anonymous_burst: float = 50.0
    # limits and timeouts
    max_body_bytes: int = 64 * 1024 * 1024
    attempt_timeout_s: float = 5.0
    total_timeout_s: float = 15.0
    max_attempts: int = 3
    # a streamed answer whose worker is silent this long counts as broken off
    stream_idle_timeout_s: float = 60.0
    retry_ratio: float = 0.2
    breaker_threshold: int = 3
    breaker_cooldown_s: float = 1.0
    # scale to zero: hold a request for a deployed model with no ready worker this long
    # (while the control plane starts one), then answer 503 with Retry-After; 0 = no hold
    cold_start_hold_s: float = 30.0
    cold_start_max_held: int = 1000  # requests held at once; beyond, 503 at once
    cold_start_retry_after_s: int = 5
    # a region published down only for want of agent reports is routed on its last
    # monitored view (and the router's own observations) for this long after
    unmonitored_grace_s: float = 180.0
    # restarts: a new router on the same port takes the listening socket over from the running
    # one through this Unix socket (default: ``<snapshot dir>/router-<port>.handoff``), once it
    # has its routing state (at most takeover_ready_timeout_s); on SIGTERM a router stops
    # accepting and answers what it was asked for at most drain_timeout_s
    handoff_path: Path | None = None
    takeover_ready_timeout_s: float = 30.0
    drain_timeout_s: float = 10.0
    # per version and region figures (rollout gates) go to the control plane this often
    figures_interval_s: float = 1.0
    # admission under overload (router.admission): a request class is refused at once (503,
    # Retry-After) while the fleet's load for the model (requests held over those its
    # regions serve without queueing) is at or above its ceiling; 0: never for that class
    admit_interactive_max_load: float = Field(default=0.0, ge=0.0)
    admit_batch_max_load: float = Field(default=1.0, ge=0.0)
    # ... and refused when the best region's expected completion time exceeds this share of
    # the request's deadline (1: the whole deadline; lower leaves room for the spread)
    admit_interactive_deadline_share: float = Field(default=1.0, gt=0.0, le=1.0)
    admit_batch_deadline_share: float = Field(default=1.0, gt=0.0, le=1.0)
    # batch requests over their ceiling but under the interactive one wait in a bounded
    # per-key fair queue (router.hold) for the load to fall, up to this many (0: refused)
    hold_batch_max: int = Field(default=0, ge=0)
    hold_batch_max_wait_s: float = Field(default=10.0, gt=0.0)  # the longest any one waits
    hold_batch_max_per_key: int = Field(default=0, ge=0)  # of one key at once (0: the max)
    # Meridian's choice: a region drawn among those within this many ms of the best,
    # weighted by free servers (0: always the best); several router replicas: 20
    spread_ms: float = Field(default=0.0, ge=0.0)
    # brownout (router.brownout): a region whose base workers hold this many times what they
    # serve without queueing sends its overflow to a deployment's degrade_to variant (0: off);
    # it counts as in brownout until brownout_hold_s passes without an overflow
    brownout_max_load: float = Field(default=0.0, ge=0.0)
    brownout_hold_s: float = Field(default=5.0, gt=0.0)
    # demo only: delay each attempt by the modelled client-region RTT (all sockets are loopback)
    emulate_wan: bool = False

    @property
    def resolved_handoff_path(self) -> Path:
        from router.handoff import handoff_path

        return self.handoff_path or handoff_path(self.snapshot_path.parent, self.port)

    @property
    def resolved_keyring_path(self) -> Path:
        return self.keyring_path or self.snapshot_path.with_suffix(".api-keys.json")
