"""The README's main command, shortened: ``meridian demo`` runs to the end with a failover,
embeddings and streamed chats alike, with TLS from its own CA on every wire."""

from __future__ import annotations

import pytest

from tests.demo.conftest import DemoRun

pytestmark = pytest.mark.slow


def test_demo_fails_over_over_tls_with_no_failed_request_and_no_broken_stream(
    demo_run: DemoRun,
) -> None:
    result, stdout = demo_run.result, demo_run.stdout
    # TLS on every wire, from the CA the demo made in its work directory
    ca = demo_run.workdir / "ca" / "ca.pem"
    assert ca.is_file()
    tls = result["tls"]
    assert tls["scheme"] == "https" and tls["control_plane"] == "https", tls
    assert tls["agents"] == "mtls" and tls["workers"] == ["https"], tls
    assert tls["plaintext_refused"] is True, tls  # http:// to the router's port fails
    assert tls["ca"] == str(ca)
    assert "4/5 router on https://127.0.0.1:" in stdout
    assert "http://" not in stdout
    assert set(demo_run.logs) >= {"control-plane.log", "router.log"}
    plaintext = [name for name, text in demo_run.logs.items() if "PLAINTEXT" in text]
    assert not plaintext, plaintext  # no process warns of a plaintext wire
    assert result["failed_requests"] == 0
    assert result["failed_region"] in result["regions"]
    after = result["phases"]["after failure"]
    assert sum(c["requests"] for c in after.values()) > 0
    served_after = {r for c in after.values() for r in c["regions"]}
    assert result["failed_region"] not in served_after  # killed before the phase began
    assert "phase 'after failure'" in stdout
    # chat streams: the table's columns, none broken, those in flight there continued
    header = next(line for line in stdout.splitlines() if "served by (requests)" in line)
    assert "TTFT p50 ms" in header and "tok/s" in header and "broken" in header
    assert result["broken_streams"] == 0, result["chat_phases"]
    assert sum(c["streams"] for c in result["chat_phases"]["after failure"].values()) > 0
    assert result["streams_in_flight_at_kill"] >= 1
    assert result["continued_streams"] >= result["streams_in_flight_at_kill"]
    steady = [c for c in result["chat_phases"]["steady"].values() if c["streams"] > c["broken"]]
    assert steady and all(c["ttft_p50_ms"] > 0 and c["tokens_per_s"] > 0 for c in steady)
