"""The OIP gRPC deadline is the request's deadline: a call still queued when it runs
out is answered DEADLINE_EXCEEDED with the reason, never runs, and is counted as a
deadline drop. The check runs in a child process (``tests/worker/grpc_deadline_check.py``)
because the worker's OIP protobuf module and ``tritonclient.grpc`` (imported by other
tests in this process) both register the ``inference`` package's names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_grpc_call_queued_past_its_deadline_is_dropped_unrun() -> None:
    child = subprocess.run(
        [sys.executable, "-m", "tests.worker.grpc_deadline_check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stdout + child.stderr
    assert "grpc deadline check passed" in child.stdout
