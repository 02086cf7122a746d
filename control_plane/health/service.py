"""The gRPC ``RegionService``: a thin transport over the ledger and the directive board.

One stream per agent: authenticate the first message, then hand each report to
the ledger and forward directive changes. A failure ends that stream only, with
the status code of the domain error (``meridian.errors.GRPC_CODES``); anything
unexpected becomes INTERNAL with a fixed message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from control_plane.health.directives import DirectiveBoard
from control_plane.health.inventory import CredentialCheck
from control_plane.health.ledger import HealthLedger
from control_plane.health.validate import validate_register, validate_report
from meridian.errors import InvalidInput, MeridianError, grpc_code_for
from proto import region_pb2 as pb
from proto import region_pb2_grpc as pb_grpc

__all__ = ["RegionServicer", "add_region_service"]

SERVICE = "meridian.region.v1.RegionService"


class _Undecodable:
    """Stands for a message whose bytes are not an ``AgentMessage``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _decode(raw: bytes) -> pb.AgentMessage | _Undecodable:
    try:
        return pb.AgentMessage.FromString(raw)
    except Exception as exc:  # protobuf raises DecodeError; anything else is also bad input
        return _Undecodable(str(exc) or type(exc).__name__)


def add_region_service(servicer: RegionServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` like the generated helper does, but decode messages leniently,
    so bytes that are not a protobuf message end their stream with INVALID_ARGUMENT
    (the generated deserializer would answer INTERNAL)."""
    handlers = {
        "Connect": grpc.stream_stream_rpc_method_handler(
            servicer.Connect,
            request_deserializer=_decode,
            response_serializer=pb.ControlMessage.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@dataclass
class _Stream:
    region: str
    credential: str
    task: asyncio.Task[Any] | None
    revoked: MeridianError | None = None


log = logging.getLogger(__name__)


class RegionServicer(pb_grpc.RegionServiceServicer):
    def __init__(
        self,
        ledger: HealthLedger,
        board: DirectiveBoard,
        check_credential: CredentialCheck,
        *,
        register_timeout_s: float = 10.0,
        peer_check: Callable[[Any, str, str], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._board = board
        self._check = check_credential
        self.check_credential = check_credential
        # mutual TLS: (context, region, credential) -> raises unless the peer certificate fits
        self._peer_check = peer_check
        self._register_timeout = register_timeout_s
        self.streams = 0
        self.rejected = 0
        self._live: dict[object, _Stream] = {}

    async def Connect(
        self,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext[pb.AgentMessage, pb.ControlMessage],
    ) -> None:
        messages = aiter(request_iterator)
        region = ""
        token = object()
        queue: asyncio.Queue[pb.Directives] | None = None
        writer: asyncio.Task[None] | None = None
        try:
            try:
                async with asyncio.timeout(self._register_timeout):
                    first = await anext(messages)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise InvalidInput(
                    f"no register message within {self._register_timeout:.0f}s"
                ) from None
            if isinstance(first, _Undecodable):
                raise InvalidInput(f"the message is not an AgentMessage: {first.reason}")
            if first.WhichOneof("body") != "register":
                raise InvalidInput("the first message of a stream must be register")
            register = first.register
            validate_register(register)
            identity = await self._check(register.region, register.credential)
            if self._peer_check is not None:
                self._peer_check(context, identity.region, register.credential)
            region = identity.region
            inventory = frozenset(g.index for g in register.gpus)
            self._ledger.register(
                region,
                token=token,
                agent_id=register.agent_id,
                agent_version=register.agent_version,
                inventory=tuple(register.gpus),
            )
            self.streams += 1
            stream = _Stream(region, register.credential, asyncio.current_task())
            self._live[token] = stream
            queue = self._board.subscribe(region)
            await context.write(pb.ControlMessage(directives=self._board.current(region)))
            writer = asyncio.create_task(self._forward(queue, context))
            ingest = self._ledger.ingest
            async for message in messages:
                if isinstance(message, _Undecodable):
                    raise InvalidInput(f"the message is not an AgentMessage: {message.reason}")
                if message.WhichOneof("body") != "report":
                    raise InvalidInput("after register, a stream carries only reports")
                validate_report(message.report, inventory)
                ingest(region, token, message.report)
        except MeridianError as exc:
            self.rejected += 1
            log.info("agent stream for %r refused: %s", region or "?", exc.message)
            await context.abort(grpc_code_for(exc), exc.message)
        except asyncio.CancelledError:
            revoked = self._live[token].revoked if token in self._live else None
            if revoked is None:
                raise
            self.rejected += 1
            log.warning("agent stream for %r revoked: %s", region, revoked.message)
            await context.abort(grpc_code_for(revoked), revoked.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("agent stream for %r failed", region or "?")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the control plane")
        finally:
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
            self._live.pop(token, None)
            if queue is not None:
                self._board.unsubscribe(region, queue)
                self._ledger.disconnect(region, token)
                self.streams -= 1

    async def revalidate(self) -> int:
        """Check every live stream's credential again; end those no longer accepted
        (rotated credential, disabled region). Returns how many were ended."""
        ended = 0
        for stream in list(self._live.values()):
            try:
                await self._check(stream.region, stream.credential)
            except MeridianError as exc:
                if exc.status in (401, 403) and stream.task is not None:
                    stream.revoked = exc
                    stream.task.cancel()
                    ended += 1
        return ended

    async def _forward(
        self,
        queue: asyncio.Queue[pb.Directives],
        context: grpc.aio.ServicerContext[pb.AgentMessage, pb.ControlMessage],
    ) -> None:
        while True:
            directives = await queue.get()
            await context.write(pb.ControlMessage(directives=directives))
