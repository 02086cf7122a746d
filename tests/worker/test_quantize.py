"""``meridian quantize``: int8 variant within tolerance, with its probes; too tight a
tolerance is refused. The bound holds on every x86-64 CPU (7-bit weights do not
saturate the kernels of CPUs without VNNI)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from meridian.cli import main as cli
from tests.worker.models import BuiltModels, onnx_reference, probes_of


def test_int8_variant_within_tolerance(
    models: BuiltModels, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "wide.int8.onnx"
    rc = cli(
        [
            "quantize",
            "--model",
            str(models.wide_onnx),
            "--out",
            str(out),
            "--samples",
            "32",
            "--tolerance",
            "0.1",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert out.is_file() and out.stat().st_size < models.wide_onnx.stat().st_size
    figures = dict(p.split("=") for p in printed.split() if "=" in p)
    assert 0 < float(figures["max_rel_error"]) <= 0.1
    x = np.random.default_rng(9).standard_normal((8, 16)).astype(np.float32)
    ref, q = onnx_reference(models.wide_onnx, x), onnx_reference(out, x)
    assert np.max(np.abs(ref - q)) <= 0.1 * np.max(np.abs(ref)) * 2
    probes = probes_of(out)  # the tolerance travels with the variant, checked where it loads
    assert probes.tolerance == 0.1 and probes.inputs["input"].shape == (8, 16)


def test_too_tight_tolerance_is_refused(
    models: BuiltModels, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "wide.int8.onnx"
    rc = cli(
        [
            "quantize",
            "--model",
            str(models.wide_onnx),
            "--out",
            str(out),
            "--samples",
            "32",
            "--tolerance",
            "1e-7",
        ]
    )
    assert rc == 1
    assert "refused" in capsys.readouterr().out
    assert not out.exists()


class _ControlPlaneStandIn:
    """Records the two registration calls; answers 201 / 200 like the registry."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str], bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self, status: int) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                recorder.calls.append((self.command, self.path, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def do_POST(self) -> None:
                self._record(201)

            def do_PUT(self) -> None:
                self._record(200)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


def test_register_posts_variant_then_uploads_artifact(
    models: BuiltModels, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stand_in = _ControlPlaneStandIn()
    thread = threading.Thread(target=stand_in.httpd.serve_forever, daemon=True)
    thread.start()
    out = tmp_path / "wide.int8.onnx"
    try:
        rc = cli(
            [
                "quantize",
                "--model",
                str(models.wide_onnx),
                "--out",
                str(out),
                "--samples",
                "16",
                "--tolerance",
                "0.2",
                "--register",
                stand_in.url,
                "--token",
                "tok",
                "--name",
                "wide",
                "--version",
                "3",
            ]
        )
    finally:
        stand_in.httpd.shutdown()
        stand_in.httpd.server_close()
        thread.join()
    assert rc == 0, capsys.readouterr().out
    (m1, p1, h1, b1), (m2, p2, h2, b2) = stand_in.calls
    assert (m1, p1) == ("POST", "/v1/models/wide/versions/3/variants")
    meta = json.loads(b1)
    assert meta["name"] == "int8" and meta["max_abs_error"] > 0
    assert h1["Authorization"] == "Bearer tok"
    assert (m2, p2) == ("PUT", "/v1/models/wide/versions/3/variants/int8/artifact")
    assert b2 == out.read_bytes()
    assert h2["X-Artifact-Sha256"] == hashlib.sha256(b2).hexdigest()
