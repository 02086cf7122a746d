"""What an agent's workers are, kept on disk so that the agent's next life finds them.

Workers run in sessions of their own: when the agent dies (``kill -9``, an OOM kill)
they keep running, holding their ports and, on real hardware, GPU memory. The
supervisor writes every worker it runs (id, pid, the process's start time, ports,
GPUs, deployment) to ``workers.json`` in the agent's state directory; on start it
adopts the live, healthy ones of that record and stops the others. A process is the
recorded one only if its pid *and* its start time (``/proc/<pid>/stat``) match, so a
recycled pid is never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

__all__ = ["AdoptedProcess", "load_record", "process_start_ticks", "save_record"]

log = logging.getLogger(__name__)

RECORD_NAME = "workers.json"


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot); None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, not reaped yet
        return None
    return int(fields[19])  # field 22 of stat(5); fields[0] is field 3


def load_record(state_dir: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((state_dir / RECORD_NAME).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("ignoring an unreadable worker record in %s: %s", state_dir, exc)
        return []
    workers = data.get("workers") if isinstance(data, dict) else None
    return [w for w in workers if isinstance(w, dict)] if isinstance(workers, list) else []


def save_record(state_dir: Path, workers: list[dict[str, Any]]) -> bytes:
    """Write the record atomically; returns what was written."""
    body = json.dumps({"workers": workers}, sort_keys=True).encode()
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / (RECORD_NAME + ".tmp")
    tmp.write_bytes(body)
    os.replace(tmp, state_dir / RECORD_NAME)
    return body


class AdoptedProcess:
    """A worker started by an earlier life of this agent: not our child, so it is watched
    through ``/proc`` instead of ``waitpid`` (the part of the asyncio process API the
    supervisor uses)."""

    def __init__(self, pid: int, start_ticks: int) -> None:
        self.pid = pid
        self.start_ticks = start_ticks
        self._returncode: int | None = None

    @property
    def returncode(self) -> int | None:
        if self._returncode is None and process_start_ticks(self.pid) != self.start_ticks:
            self._returncode = -1  # its status went to whoever reaped it
        return self._returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        """Until it exits (a pidfd becomes readable then; it is not our child to wait for)."""
        if (code := self.returncode) is not None:
            return code
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._returncode = -1
            return -1
        try:
            if self.returncode is None:  # the pidfd is of the recorded process, not a new one
                loop = asyncio.get_running_loop()
                exited: asyncio.Future[None] = loop.create_future()
                loop.add_reader(fd, _settle, exited)
                try:
                    await exited
                finally:
                    loop.remove_reader(fd)
                self._returncode = -1
        finally:
            os.close(fd)
        return self._returncode if self._returncode is not None else -1


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
