"""A whole Meridian fleet on this machine, as real processes (the demo and the e2e tests).

Control plane, one agent per region (simulated GPUs; each starts the workers it is
told to), and routers, each a ``meridian`` child process with its own log.

With ``ca_dir`` the fleet makes (or reuses) a fleet CA there and uses it on every wire:
the admin API serves HTTPS, agents enroll and stream over mutual TLS and start their
workers with certificates, and routers reach workers with a client certificate and serve
HTTPS themselves (the demo's and the end-to-end tests' way). Without it every wire is
plaintext, each process warning so (``meridian demo --insecure``).
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx

from demo.admin import Admin
from demo.geography import RegionSite
from demo.processes import Child, Children
from meridian.net import free_port
from meridian.pki.ca import CA_CERT_FILE
from meridian.pki.files import ServerFiles
from meridian.waiting import wait_until

__all__ = ["LocalFleet"]


@dataclass
class Replica:
    child: Child
    http_port: int
    grpc_port: int
    enroll_port: int = 0  # with TLS: where agents enroll
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"


@dataclass
class LocalFleet:
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    children: Children = field(init=False)
    replicas: list[Replica] = field(default_factory=list)
    agents: dict[str, Child] = field(default_factory=dict)
    routers: list[Child] = field(default_factory=list)
    read_token: str = ""
    # how each router was started (arguments, environment), to start a successor alike
    router_specs: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    # the fleet CA's directory: TLS on every wire (None: plaintext, each process warning)
    ca_dir: Path | None = None
    router_files: ServerFiles | None = field(default=None, init=False)
    _trust: ssl.SSLContext | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.children = Children(self.workdir / "logs", self.env)
        if self.ca_dir is not None:
            self.router_files = _fleet_pki(self.ca_dir, self.workdir / "tls")

    @property
    def tls(self) -> bool:
        return self.ca_dir is not None

    @property
    def ca_file(self) -> Path | None:
        """The fleet CA certificate clients trust (None without TLS)."""
        return self.ca_dir / CA_CERT_FILE if self.ca_dir is not None else None

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client of this fleet verifies servers with (one context, made once:
        loading the CA for every request would cost each of them)."""
        ca = self.ca_file
        if ca is None:
            return True
        if self._trust is None:
            self._trust = ssl.create_default_context(cafile=str(ca))
        return self._trust

    @property
    def control_plane(self) -> Child | None:
        return self.replicas[0].child if self.replicas else None

    @property
    def base_url(self) -> str:
        """The first live control-plane replica's URL."""
        for replica in self.replicas:
            if replica.child.alive():
                return replica.url
        return self.replicas[0].url if self.replicas else ""

    @property
    def grpc_port(self) -> int:
        return self.replicas[0].grpc_port if self.replicas else 0

    # --- control plane ---------------------------------------------------------------------

    def start_control_plane(self, env: dict[str, str] | None = None) -> Admin:
        """Start a control-plane replica (call again for more, sharing database and etcd)."""
        name = "control-plane" if not self.replicas else f"control-plane-{len(self.replicas) + 1}"
        enroll_port = free_port() if self.tls else 0
        replica = self._start_replica(name, free_port(), free_port(), enroll_port, env)
        self.replicas.append(replica)
        self.wait_http(f"{replica.url}/healthz", replica.child, name)
        admin = Admin(replica.url, self.admin_token, verify=self.verify)
        if not self.read_token:
            self.read_token = admin.token("routers", ["read"])
        return admin

    def restart_replica(self, index: int, name: str, env: dict[str, str] | None = None) -> Replica:
        """Start replica ``index`` again on its ports (with its TLS, when the fleet has it),
        in place of its dead process; it may not answer yet (``wait_http`` its healthz)."""
        old = self.replicas[index]
        replica = self._start_replica(name, old.http_port, old.grpc_port, old.enroll_port, env)
        self.replicas[index] = replica
        return replica

    def _start_replica(
        self, name: str, http_port: int, grpc_port: int, enroll_port: int,
        env: dict[str, str] | None,
    ) -> Replica:  # fmt: skip
        args = ["control-plane", "--port", str(http_port), "--grpc-port", str(grpc_port)]
        extra: dict[str, str] = {}
        if self.ca_dir is not None:
            args += ["--tls-dir", str(self.ca_dir)]
            extra["MERIDIAN_AGENT_ENROLL_PORT"] = str(enroll_port)
        else:
            args.append("--insecure")
        child = self.children.start(
            name,
            args,
            env={
                "MERIDIAN_DATA_DIR": str(self.workdir / "cp"),
                "MERIDIAN_BOOTSTRAP_ADMIN_TOKEN": self.admin_token,
                **extra,
                **(env or {}),
            },
        )
        scheme = "https" if self.tls else "http"
        return Replica(child, http_port, grpc_port, enroll_port, scheme)

    # --- regions -----------------------------------------------------------------------------

    def add_region(
        self, admin: Admin, site: RegionSite, deploy: Sequence[tuple[str, str, str | None]]
    ) -> Child:
        """Register ``site``, deploy ``(model, version, variant)`` there, start its agent."""
        credential = admin.add_region(site)
        for model, version, variant in deploy:
            admin.deploy(model, version, site.name, variant)
        cred_file = self.workdir / f"{site.name}.credential"
        cred_file.write_text(credential)
        cred_file.chmod(0o600)
        agent = self.children.start(
            f"agent-{site.name}",
            [
                "agent", "--control-plane",
                ",".join(f"127.0.0.1:{r.grpc_port}" for r in self.replicas),
                "--region", site.name, "--credential-file", str(cred_file),
                "--simulate-gpus", str(site.gpus), "--gpu-type", site.gpu_type,
                "--state-dir", str(self.workdir / f"agent-{site.name}"),
                *self.agent_tls_args(),
            ],
        )  # fmt: skip
        self.agents[site.name] = agent
        return agent

    def agent_tls_args(self) -> list[str]:
        """An agent's arguments for this fleet's wire: the fleet CA and where to enroll."""
        if self.ca_file is None:
            return ["--insecure"]
        enroll = ",".join(f"127.0.0.1:{r.enroll_port}" for r in self.replicas)
        return ["--ca-cert", str(self.ca_file), "--enroll", enroll]

    def restart_agent(self, region: str) -> Child:
        """Start the agent of ``region`` again as it was (same state directory)."""
        old = self.agents[region]
        args = cast(list[str], old.proc.args)[3:]  # past "python -m meridian"
        agent = self.children.start(f"{old.name}-again", args)
        self.agents[region] = agent
        return agent

    # --- routers -----------------------------------------------------------------------------

    def start_router(
        self, *, port: int | None = None, tls_dir: Path | None = None, emulate_wan: bool = False,
        name: str = "router", etcd: str | None = None, env: dict[str, str] | None = None,
        require_api_key: bool = False,
    ) -> tuple[Child, int]:  # fmt: skip
        port = port or free_port()
        args = ["router", "--port", str(port), "--token", self.read_token]
        for replica in self.replicas:
            args += ["--control-plane", replica.url]
        args += ["--snapshot-path", str(self.workdir / f"{name}-snapshot.json")]
        if self.router_files is not None:  # HTTPS and TLS to workers, from the fleet CA
            files = self.router_files
            args += ["--tls-cert", str(files.cert), "--tls-key", str(files.key),
                     "--fleet-ca", str(files.ca),
                     "--worker-cert", str(files.cert), "--worker-key", str(files.key)]  # fmt: skip
        elif tls_dir is not None:
            args += ["--self-signed", str(tls_dir)]
        else:
            args.append("--insecure")
        if emulate_wan:
            args.append("--emulate-wan")
        if require_api_key:
            args.append("--require-api-key")
        if etcd:
            args += ["--etcd", etcd]
        router = self.children.start(name, args, env=env)
        self.routers.append(router)
        self.router_specs[name] = (args, dict(env or {}))
        return router, port

    def router_url(self, port: int) -> str:
        """Where clients reach the router on ``port`` (HTTPS from the fleet CA, with one)."""
        return f"{'https' if self.router_files is not None else 'http'}://127.0.0.1:{port}"

    def start_successor_router(self, name: str, new_name: str) -> Child:
        """Start a router exactly as ``name`` was (same port, same state directory): it takes
        the listening socket over once it has its routing state."""
        args, env = self.router_specs[name]
        router = self.children.start(new_name, args, env=env)
        self.routers.append(router)
        self.router_specs[new_name] = (args, env)
        return router

    # --- waiting -----------------------------------------------------------------------------

    def live(self) -> list[Child]:
        return [*(r.child for r in self.replicas), *self.agents.values(), *self.routers]

    @staticmethod
    def check_alive(children: Sequence[Child]) -> None:
        for child in children:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")

    def wait_http(self, url: str, child: Child, what: str, timeout: float = 120) -> None:
        # with the fleet CA, servers are checked against it; without, a router may be
        # self-signed (--self-signed): only that it answers counts here
        verify: ssl.SSLContext | bool = self.verify if self.tls else False

        def up() -> bool:
            self.check_alive([child])
            try:
                return httpx.get(url, timeout=1.0, verify=verify).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=timeout, interval=0.2, what=f"{what} up")

    def snapshot(self) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {self.read_token}"}
        r = httpx.get(
            f"{self.base_url}/v1/routing/snapshot", headers=headers, timeout=2, verify=self.verify
        )
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def serving_regions(self, models: Sequence[str] = ()) -> set[str]:
        """Regions that are routable and have a routable worker with a model loaded
        (with each of ``models``, when named), as their agents report: a region whose
        agent is lost is not known to serve."""
        try:
            snap = self.snapshot()
        except (httpx.HTTPError, ValueError):
            return set()

        def serves(region: dict[str, Any]) -> bool:
            loaded = {
                m.partition(":")[0]
                for w in region["workers"]
                if w["state"] in ("healthy", "degraded")
                for m in w["models"]
            }
            return bool(loaded) and loaded >= set(models)

        return {
            r["name"]
            for r in snap.get("regions", [])
            if r["state"] in ("healthy", "degraded") and serves(r)
        }

    def wait_serving(
        self, regions: set[str], timeout: float = 300, report: Any = None,
        models: Sequence[str] = (),
    ) -> None:  # fmt: skip
        last = [""]

        def ready() -> bool:
            self.check_alive(self.routers)
            serving = self.serving_regions(models)
            status = f"regions serving: {len(serving & regions)}/{len(regions)}"
            if report is not None and status != last[0]:
                report(status)
                last[0] = status
            return regions <= serving

        wait_until(ready, timeout=timeout, interval=0.3, what="every region serving")

    def stop(self) -> None:
        self.children.stop_all()


def _fleet_pki(ca_dir: Path, tls_dir: Path) -> ServerFiles:
    """The fleet CA in ``ca_dir`` (made on first use) and the routers' certificate from it
    (server of end users and client of workers) in ``tls_dir``."""
    from meridian.pki import CertificateAuthority, Role
    from meridian.pki.ca import CA_KEY_FILE
    from meridian.pki.files import write_issued

    if (ca_dir / CA_CERT_FILE).exists() and (ca_dir / CA_KEY_FILE).exists():
        ca = CertificateAuthority.load(ca_dir)
    else:
        ca = CertificateAuthority.create("Meridian demo fleet CA")
        ca.save(ca_dir)
    return write_issued(ca, Role.ROUTER, tls_dir, name="router")
