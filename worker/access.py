"""Who may call a worker: TLS with fleet client certificates, and the management token.

With TLS on (``WorkerSettings.tls_cert``), every connection must present a client
certificate of the fleet CA (the handshake refuses others), and its role decides
what it may ask: the router everything (inference, model management, reads); the
region agent only probes and statistics; anyone else nothing. Model management
(load, unload) also needs ``Authorization: Bearer <management token>`` in every
mode: without a configured token those routes are refused.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from meridian.errors import MeridianError, PermissionDenied, Unauthenticated
from meridian.pki.identity import SCHEME, Role

if TYPE_CHECKING:
    import httpx

    from worker.settings import WorkerSettings

__all__ = [
    "MANAGEMENT_PATH",
    "CertificateReloader",
    "artifact_transport",
    "bind_worker_port",
    "check_management_token",
    "client_context",
    "request_refusal",
    "role_of_peercert",
    "role_of_transport",
    "router_only_interceptor",
    "server_context",
]

log = logging.getLogger(__name__)
PROBE_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/v2/stats", "/metrics", "/v2"})
MANAGEMENT_PATH = "/v2/repository/models/"


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS for a worker's listener: its certificate, and a client certificate of the
    fleet CA required of every connection."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class CertificateReloader:
    """Loads a renewed certificate (the agent rewrites the files before the old one
    expires) into the live server context: new connections get it, open ones go on."""

    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path) -> None:
        self._context, self._cert, self._key = context, cert, key
        self._seen = self._stamp()
        self.reloads = 0

    def _stamp(self) -> tuple[float, float]:
        return (self._cert.stat().st_mtime, self._key.stat().st_mtime)

    def reload_if_changed(self) -> bool:
        try:
            stamp = self._stamp()
            if stamp == self._seen:
                return False
            self._context.load_cert_chain(str(self._cert), str(self._key))
        except (OSError, ssl.SSLError) as exc:  # half-written pair: try again next time
            log.warning("reloading the TLS certificate failed: %s", exc)
            return False
        self._seen = stamp
        self.reloads += 1
        log.info("reloaded the TLS certificate from %s", self._cert)
        return True

    async def run(self, interval_s: float = 10.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.reload_if_changed()


def artifact_transport(ca: Path | None) -> httpx.AsyncBaseTransport | None:
    """Artifact downloads trust the fleet CA (the control plane's HTTPS artifact routes)
    as well as the public ones (object stores); None: the public ones only."""
    if ca is None:
        return None
    import httpx

    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(ca))
    return httpx.AsyncHTTPTransport(verify=context)


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS for a client of workers (the router, the agent's scrapes): trusts only the
    fleet CA and presents ``cert``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    return context


def role_of_peercert(peercert: Any) -> str | None:
    if not peercert:
        return None
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI" and value.startswith(f"{SCHEME}role/"):
            return str(value[len(f"{SCHEME}role/") :])
    return None


def role_of_transport(transport: Any) -> str | None:
    """The fleet role in the peer's certificate; None on a plaintext connection."""
    ssl_object = transport.get_extra_info("ssl_object")
    return None if ssl_object is None else role_of_peercert(ssl_object.getpeercert())


def request_refusal(role: str | None, method: str, path: str) -> MeridianError | None:
    """Under TLS: why a peer of ``role`` may not make this request (None: it may)."""
    if role == Role.ROUTER:
        return None
    if role == Role.AGENT and method in ("GET", "HEAD") and path in PROBE_PATHS:
        return None
    return PermissionDenied(
        f"this worker answers {method} {path} to the fleet's router only "
        f"(the client certificate is for {role or 'no fleet role'!r})"
    )


def check_management_token(expected: str | None, headers: Iterable[tuple[str, str]]) -> None:
    if not expected:
        raise PermissionDenied(
            "model management is off: this worker has no management token "
            "(MERIDIAN_WORKER_MANAGEMENT_TOKEN)"
        )
    presented = ""
    for name, value in headers:
        if name.lower() == "authorization":
            presented = value.removeprefix("Bearer ").strip()
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Unauthenticated("model management needs the worker's management bearer token")


class _RouterOnly(grpc.aio.ServerInterceptor):
    """Wraps every method so it first checks the peer certificate's role is router."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _wrap(handler)


def _refuse(context: Any) -> MeridianError | None:
    pems = context.auth_context().get("peer_uri") or []
    roles = [p.decode() for p in pems if p.startswith(f"{SCHEME}role/".encode())]
    role = roles[0][len(f"{SCHEME}role/") :] if roles else None
    if role == Role.ROUTER:
        return None
    return PermissionDenied(
        f"this worker answers the fleet's router only (the client certificate is for {role!r})"
    )


def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    from meridian.errors import grpc_code_for

    if handler.unary_unary is not None:
        inner_uu: Any = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            if (refused := _refuse(context)) is not None:
                await context.abort(grpc_code_for(refused), refused.message)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_us: Any = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> Any:
            if (refused := _refuse(context)) is not None:
                await context.abort(grpc_code_for(refused), refused.message)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream is not None:
        inner_ss: Any = handler.stream_stream

        async def stream_stream(requests: Any, context: Any) -> Any:
            if (refused := _refuse(context)) is not None:
                await context.abort(grpc_code_for(refused), refused.message)
            async for item in inner_ss(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )
    inner_su: Any = handler.stream_unary

    async def stream_unary(requests: Any, context: Any) -> Any:
        if (refused := _refuse(context)) is not None:
            await context.abort(grpc_code_for(refused), refused.message)
        return await inner_su(requests, context)

    return grpc.stream_unary_rpc_method_handler(
        stream_unary, handler.request_deserializer, handler.response_serializer
    )


def router_only_interceptor() -> grpc.aio.ServerInterceptor:
    return _RouterOnly()


def bind_worker_port(server: grpc.aio.Server, address: str, settings: WorkerSettings) -> int:
    """The worker's gRPC port: mutual TLS (fleet client certificates required) when the
    settings name TLS files, plaintext otherwise."""
    if not settings.tls:
        return server.add_insecure_port(address)
    assert settings.tls_cert and settings.tls_key and settings.tls_ca
    credentials = grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        settings.tls_ca.read_bytes(),
        require_client_auth=True,
    )
    return server.add_secure_port(address, credentials)
