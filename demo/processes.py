"""Child processes the demo owns: started in their own process groups, all stopped on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["Child", "Children", "descendants"]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (workers run in sessions of their own, so a
    process-group signal does not reach them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill_group(self) -> None:
        """SIGKILL the child and everything it started (a region failing hard)."""
        below = descendants(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _kill(below, signal.SIGKILL)
        self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Children:
    """Starts ``python -m meridian ...`` children with logs under ``log_dir``."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, **(env or {})}
        self.children: list[Child] = []
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("ab")
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "meridian", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**self.env, **(env or {})},
            start_new_session=True,  # its own process group: stopped with its workers
        )
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every group, newest first; SIGKILL what is still there after ``timeout``."""
        below = [
            pid for child in self.children if child.alive() for pid in descendants(child.proc.pid)
        ]
        for child in reversed(self.children):
            if child.alive():
                try:
                    os.killpg(child.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for child in reversed(self.children):
            try:
                child.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill_group()
            # workers started by an agent live in the agent's group: make sure they are gone
            try:
                os.killpg(child.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _kill(below, signal.SIGKILL)  # anything a child left behind
        for log in self._logs:
            log.close()
        self._logs.clear()
