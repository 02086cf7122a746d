"""Listening-socket hand-off between router processes (restarts without refused connections).

A serving router offers its listening socket on a Unix socket beside its state
(``<snapshot dir>/router-<port>.handoff``, mode 0600). A new router on the same port
asks for it first: it receives a duplicate of the very same listening socket
(``SCM_RIGHTS``), so both processes accept from one kernel queue and no connection
is lost when the old one stops accepting, drains and exits (on SIGTERM). Only a
peer of the same user is answered or believed (``SO_PEERCRED``). When there is no
router to take over from, the new one binds the port itself (with ``SO_REUSEPORT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from pathlib import Path

from meridian.background import cancel_and_wait

__all__ = ["HandoffServer", "handoff_path", "take_listener"]

log = logging.getLogger(__name__)

_HELLO = b"meridian-router-listener"


def handoff_path(state_dir: Path, port: int) -> Path:
    return state_dir / f"router-{port}.handoff"


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def take_listener(path: Path, timeout_s: float = 2.0) -> socket.socket | None:
    """The listening socket of the router serving at ``path``; None when there is none."""
    if not path.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout_s)
    try:
        conn.connect(str(path))
        if _peer_uid(conn) != os.getuid():
            log.warning("ignoring %s: it is served by another user", path)
            return None
        message, fds, _flags, _addr = socket.recv_fds(conn, len(_HELLO), 1)
    except OSError as exc:
        log.info("no router to take the listener from at %s (%s)", path, exc)
        return None
    finally:
        conn.close()
    if message != _HELLO or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    listener = socket.socket(fileno=fds[0])
    listener.setblocking(False)
    return listener


class HandoffServer:
    """Offers ``listener`` to routers that start on the same port, until closed."""

    def __init__(self, path: Path, listener: socket.socket) -> None:
        self.path = path
        self._listener = listener
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._inode = 0
        self.handed = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a predecessor's offer: it was taken (by us) or is stale
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self._inode = self.path.stat().st_ino
        sock.listen(8)
        sock.setblocking(False)
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="router-handoff")

    async def _serve(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            with conn:
                try:
                    if _peer_uid(conn) != os.getuid():
                        continue
                    socket.send_fds(conn, [_HELLO], [self._listener.fileno()])
                    self.handed += 1
                    log.info("handed the listening socket to a new router")
                except OSError as exc:
                    log.warning("listener hand-off failed: %s", exc)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                if self.path.stat().st_ino == self._inode:  # not a successor's offer
                    self.path.unlink()
