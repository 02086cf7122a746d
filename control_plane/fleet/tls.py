"""Mutual TLS between region agents and the control plane, and agent enrollment.

With :class:`AgentTLS` in the fleet settings, a replica listens on two ports:

* the agent-stream port, mutual TLS: a client must present a certificate of the
  fleet CA, and :func:`peer_check_for` then requires that it names the agent role,
  the region its stream registers, and the credential it presents (so a rotated
  credential refuses every certificate issued under the old one);
* the enrollment port, TLS that checks only the server: ``Enroll`` takes the
  region credential and a CSR and answers a short-lived certificate naming the region.

Without it (``tls=None``) the agent port is plaintext, as for local tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from control_plane.health.inventory import CredentialCheck
from meridian.errors import (
    InvalidInput,
    MeridianError,
    PermissionDenied,
    Unauthenticated,
    grpc_code_for,
)
from meridian.pki import CertificateAuthority, Role, credential_tag, identity_of_pem
from proto import enroll_pb2 as epb

if TYPE_CHECKING:
    from control_plane.settings import ControlPlaneSettings

__all__ = [
    "AgentTLS",
    "EnrollmentServicer",
    "PeerCheck",
    "add_tls_arguments",
    "agent_tls_from",
    "bind_agent_ports",
    "peer_check_for",
    "tls_from_args",
]

log = logging.getLogger(__name__)
ENROLL_SERVICE = "meridian.pki.v1.Enrollment"

# (servicer context, region of the stream, credential presented) -> None or raises
PeerCheck = Callable[[Any, str, str], None]


@dataclass(frozen=True)
class AgentTLS:
    ca: CertificateAuthority
    enroll_port: int = 0  # 0: any free port (see FleetRuntime.enroll_port)
    hosts: Sequence[str] = ("127.0.0.1", "localhost")  # names in the server certificate
    agent_cert_lifetime: dt.timedelta = dt.timedelta(hours=1)
    server_cert_lifetime: dt.timedelta = dt.timedelta(days=7)
    extra_server_names: Sequence[str] = field(default_factory=tuple)


def agent_tls_from(settings: ControlPlaneSettings) -> AgentTLS | None:
    """The agents' TLS from the control plane's settings; None (plaintext) only when
    ``insecure`` or, in local use, when no CA directory is set, with a warning."""
    if settings.tls_dir is None:
        log.warning(
            "agents' gRPC is PLAINTEXT (%s): credentials and snapshots cross the network in "
            "clear; run `meridian ca init --dir DIR` and set MERIDIAN_TLS_DIR=DIR",
            "--insecure" if settings.insecure else "no MERIDIAN_TLS_DIR in local use",
        )
        return None
    return AgentTLS(
        CertificateAuthority.load(settings.tls_dir),
        enroll_port=settings.agent_enroll_port,
        agent_cert_lifetime=dt.timedelta(seconds=settings.agent_cert_lifetime_s),
        extra_server_names=tuple(
            h for h in {settings.grpc_host, settings.http_host} if h not in ("0.0.0.0", "::")
        ),
    )


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    """``--tls-dir`` / ``--enroll-port`` / ``--insecure`` for processes that run a fleet plane."""
    p.add_argument("--tls-dir", type=Path, default=None, help="the fleet CA's directory")
    p.add_argument("--enroll-port", type=int, default=0, help="agents' enrollment port")
    p.add_argument("--insecure", action="store_true", help="plaintext agents (logs a warning)")


def tls_from_args(args: argparse.Namespace) -> AgentTLS | None:
    if args.tls_dir is None:
        log.warning(
            "agents' gRPC is PLAINTEXT (%s)", "--insecure" if args.insecure else "no --tls-dir"
        )
        return None
    return AgentTLS(CertificateAuthority.load(args.tls_dir), enroll_port=args.enroll_port)


def peer_check_for(tls: AgentTLS | None) -> PeerCheck | None:
    return None if tls is None else check_agent_peer


def check_agent_peer(context: Any, region: str, credential: str) -> None:
    """The stream's peer certificate must name the agent role, ``region`` and the
    presented credential. The TLS layer already checked it was issued by the fleet CA
    and is within its validity."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        raise Unauthenticated("the agent stream needs a client certificate of the fleet CA")
    peer = identity_of_pem(pems[0])
    if peer.role != Role.AGENT.value:
        raise PermissionDenied(f"the client certificate is for role {peer.role!r}, not agent")
    if peer.region != region:
        raise PermissionDenied(
            f"the client certificate names region {peer.region!r}, not {region!r}"
        )
    if peer.credential_tag != credential_tag(credential):
        raise PermissionDenied(
            "the client certificate was issued under another (rotated) credential: enroll again"
        )


class EnrollmentServicer:
    def __init__(self, tls: AgentTLS, check_credential: CredentialCheck) -> None:
        self._tls = tls
        self._check = check_credential
        self.issued = 0

    async def Enroll(self, request: epb.EnrollRequest, context: Any) -> epb.EnrollReply:
        try:
            identity = await self._check(request.region, request.credential)
            if request.role in ("", Role.AGENT.value):
                issued = self._tls.ca.sign_csr(
                    request.csr_pem,
                    Role.AGENT,
                    region=identity.region,
                    lifetime=self._tls.agent_cert_lifetime,
                    credential=request.credential,
                )
            elif request.role == Role.WORKER.value:
                hosts = list(request.hosts)
                if not hosts or len(hosts) > 8 or any(not h or len(h) > 253 for h in hosts):
                    raise InvalidInput("a worker certificate names 1 to 8 hosts")
                issued = self._tls.ca.sign_csr(
                    request.csr_pem,
                    Role.WORKER,
                    region=identity.region,
                    hosts=hosts,
                    lifetime=self._tls.agent_cert_lifetime,
                )
            else:
                raise InvalidInput(f"cannot enroll role {request.role!r}: agent or worker")
        except MeridianError as exc:
            log.info("enrollment for %r refused: %s", request.region, exc.message)
            await context.abort(grpc_code_for(exc), exc.message)
            raise  # abort raises; this line is for the type checker
        self.issued += 1
        log.info(
            "issued a %s certificate for region %r until %s",
            request.role or "agent", identity.region, issued.not_after,
        )  # fmt: skip
        return epb.EnrollReply(
            cert_pem=issued.cert_pem, ca_pem=issued.ca_pem, not_after=issued.not_after.timestamp()
        )


def bind_agent_ports(
    server: grpc.aio.Server, tls: AgentTLS | None, address: str, check: CredentialCheck
) -> tuple[int, int]:
    """Listen for agents on ``address``; with ``tls`` over mutual TLS, plus the enrollment
    port on the same host. Returns (agent port, enrollment port or 0)."""
    if tls is None:
        return server.add_insecure_port(address), 0
    host = address.rsplit(":", 1)[0]
    hosts = list(tls.hosts) + list(tls.extra_server_names)
    if host not in hosts and host not in ("0.0.0.0", "[::]"):
        hosts.append(host)
    cert = tls.ca.issue(Role.CONTROL_PLANE, hosts=hosts, lifetime=tls.server_cert_lifetime)
    pair = [(cert.key_pem, cert.cert_pem)]
    mutual = grpc.ssl_server_credentials(pair, tls.ca.cert_pem, require_client_auth=True)
    port = server.add_secure_port(address, mutual)
    enroll_port = server.add_secure_port(
        f"{host}:{tls.enroll_port}", grpc.ssl_server_credentials(pair)
    )
    servicer = EnrollmentServicer(tls, check)
    handlers = {
        "Enroll": grpc.unary_unary_rpc_method_handler(
            servicer.Enroll,
            request_deserializer=epb.EnrollRequest.FromString,
            response_serializer=epb.EnrollReply.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(ENROLL_SERVICE, handlers),)
    )
    return port, enroll_port
