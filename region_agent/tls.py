"""The agent's certificate: enrollment, renewal, and the mutual-TLS channel it opens.

The agent makes its own P-256 key, sends a CSR with its region credential to the
control plane's enrollment port (TLS that checks the server against the fleet CA),
and keeps the certificate it receives. Renewal (a fresh key, the same call) happens
once ``renew_at`` of the certificate's lifetime has passed: a live stream is not
dropped (TLS checked its certificate at the handshake); the next connection uses
the new certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from meridian.pki import new_key_and_csr
from proto import enroll_pb2 as epb

__all__ = ["AgentCertificate", "AgentTLS", "WorkerFiles", "open_channel"]

log = logging.getLogger(__name__)
ENROLL_METHOD = "/meridian.pki.v1.Enrollment/Enroll"


@dataclass(frozen=True)
class WorkerFiles:
    cert: Path
    key: Path
    ca: Path
    agent_cert: Path  # the agent's own, for its scrapes of the workers
    agent_key: Path

    def worker_env(self) -> dict[str, str]:
        """The environment that gives a ``meridian worker`` its TLS (worker.settings)."""
        return {
            "MERIDIAN_WORKER_TLS_CERT": str(self.cert),
            "MERIDIAN_WORKER_TLS_KEY": str(self.key),
            "MERIDIAN_WORKER_TLS_CA": str(self.ca),
        }

    def scrape_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.load_cert_chain(str(self.agent_cert), str(self.agent_key))
        return context


def _write_all(directory: Path, contents: Sequence[tuple[Path, bytes, bool]]) -> None:
    """Replace each file atomically (a worker may be reading it); keys are 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    for path, data, private in contents:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


@dataclass(frozen=True)
class AgentTLS:
    ca_pem: bytes  # the fleet CA: the only issuer the agent trusts for the control plane
    enroll_addresses: Sequence[str]  # host:port of control-plane enrollment ports
    renew_at: float = 2 / 3  # share of the certificate's lifetime after which it renews
    timeout_s: float = 10.0


class AgentCertificate:
    def __init__(self, tls: AgentTLS, region: str, credential: str) -> None:
        if not tls.enroll_addresses:
            raise ValueError("mutual TLS needs at least one enrollment address")
        self.tls = tls
        self._region = region
        self._credential = credential
        self.key_pem = b""
        self.cert_pem = b""
        self.issued_at: dt.datetime | None = None  # when this agent received it
        self.not_after: dt.datetime | None = None
        self.enrollments = 0
        self._next = 0
        self.worker_files: WorkerFiles | None = None  # renewed with the agent's own
        self._worker_hosts: tuple[str, ...] = ()

    def renew_due(self) -> dt.datetime | None:
        """When to renew: ``renew_at`` of the way from receipt to expiry (the CA backdates
        ``not_before`` for clock skew, so that is not where the lifetime starts)."""
        if self.issued_at is None or self.not_after is None:
            return None
        return self.issued_at + (self.not_after - self.issued_at) * self.tls.renew_at

    def needs_enrollment(self, now: dt.datetime | None = None) -> bool:
        due = self.renew_due()
        return due is None or (now or dt.datetime.now(dt.UTC)) >= due

    async def ensure(self) -> None:
        """Enroll if there is no certificate or it is due for renewal."""
        if self.needs_enrollment():
            await self.enroll()

    async def enroll(self) -> None:
        """One enrollment, trying each address once; raises the last gRPC error."""
        key_pem, reply = await self._request("agent", ())
        self._install(key_pem, reply.cert_pem)

    async def issue_worker_files(self, directory: Path, hosts: Sequence[str]) -> WorkerFiles:
        """A certificate for this region's workers (role worker, serving ``hosts``), written
        with its key and the fleet CA into ``directory``; the agent's own certificate is
        written there too, as the client certificate of its scrapes."""
        key_pem, reply = await self._request("worker", hosts)
        self._worker_hosts = tuple(hosts)
        files = WorkerFiles(
            directory / "worker.pem", directory / "worker-key.pem", directory / "ca.pem",
            directory / "agent.pem", directory / "agent-key.pem",
        )  # fmt: skip
        contents = [
            (files.key, key_pem, True), (files.cert, reply.cert_pem, False),
            (files.ca, self.tls.ca_pem, False), (files.agent_key, self.key_pem, True),
            (files.agent_cert, self.cert_pem, False),
        ]  # fmt: skip
        await asyncio.to_thread(_write_all, directory, contents)
        self.worker_files = files
        return files

    async def _request(self, role: str, hosts: Sequence[str]) -> tuple[bytes, epb.EnrollReply]:
        key_pem, csr_pem = new_key_and_csr(f"{role}.{self._region}")
        request = epb.EnrollRequest(
            region=self._region, credential=self._credential, csr_pem=csr_pem,
            role=role, hosts=list(hosts),
        )  # fmt: skip
        creds = grpc.ssl_channel_credentials(self.tls.ca_pem)
        error: grpc.aio.AioRpcError | None = None
        addresses = list(self.tls.enroll_addresses)
        for i in range(len(addresses)):
            address = addresses[(self._next + i) % len(addresses)]
            async with grpc.aio.secure_channel(address, creds) as channel:
                call = channel.unary_unary(
                    ENROLL_METHOD,
                    request_serializer=epb.EnrollRequest.SerializeToString,
                    response_deserializer=epb.EnrollReply.FromString,
                )
                try:
                    reply = await call(request, timeout=self.tls.timeout_s)
                except grpc.aio.AioRpcError as exc:
                    error = exc
                    if exc.code() in (
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.INVALID_ARGUMENT,
                    ):
                        raise  # another replica would answer the same
                    continue
            self._next += i
            return key_pem, reply
        assert error is not None
        raise error

    def _install(self, key_pem: bytes, cert_pem: bytes) -> None:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(cert_pem)
        self.key_pem, self.cert_pem = key_pem, cert_pem
        self.issued_at, self.not_after = dt.datetime.now(dt.UTC), cert.not_valid_after_utc
        self.enrollments += 1
        log.info("certificate for region %r valid until %s", self._region, self.not_after)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if not self.cert_pem:
            raise RuntimeError("no certificate yet: enroll first")
        return grpc.ssl_channel_credentials(self.tls.ca_pem, self.key_pem, self.cert_pem)

    async def renew_forever(self, retry_s: float = 5.0) -> None:
        """Renew each time the certificate is due; a failed renewal is retried (the
        live stream goes on meanwhile). Runs until cancelled."""
        while True:
            due = self.renew_due()
            now = dt.datetime.now(dt.UTC)
            wait = 0.0 if due is None else max(0.0, (due - now).total_seconds())
            await asyncio.sleep(wait)
            try:
                await self.enroll()
                if self.worker_files is not None:  # workers reload changed files
                    hosts = self._worker_hosts
                    await self.issue_worker_files(self.worker_files.cert.parent, hosts)
            except grpc.aio.AioRpcError as exc:
                log.warning("renewing the certificate failed: %s %s", exc.code(), exc.details())
                await asyncio.sleep(random.uniform(0.5, 1.0) * retry_s)


def open_channel(
    address: str, certificate: AgentCertificate | None, options: Sequence[tuple[str, int]] = ()
) -> grpc.aio.Channel:
    if certificate is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, certificate.channel_credentials(), list(options))
