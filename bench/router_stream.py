"""Time to first token through the router vs straight to the worker.

``python -m bench.router_stream [--quick]``. A real ``meridian worker`` serves a tiny
randomly initialised GPT-2 (``tests.worker.generation.tiny``, built once in a
temporary folder) and a real ``meridian router`` (plain HTTP) routes to it, both on
loopback. One client alternates, request by request, between the two paths: a
streamed ``/v1/completions`` (``max_tokens`` 8), timed from sending the request to
the first server-sent event with text. The router's added time to first token is
the median of the paired differences (router minus direct, adjacent requests), so
the worker's own jitter cancels out; the target is a p50 of at most 1 ms.
"""

from __future__ import annotations

import socket
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import orjson

from bench.report import parse_args, record, table
from bench.router import _process
from meridian.net import free_port
from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView

BODY = orjson.dumps(
    {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0,
     "ignore_eos": True, "stream": True}
)  # fmt: skip


def _request(port: int) -> bytes:
    return (
        b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (port, len(BODY), BODY)
    )


class _Client:
    """One keep-alive connection; reads a chunked event stream with no HTTP library
    in the way (the same cost on both paths)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = _request(port)

    def ttft(self) -> float:
        """Seconds to the first event with text; then reads the answer to its end."""
        start = time.perf_counter()
        self.sock.sendall(self.request)
        buf, first = b"", None
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("connection closed")
            buf += data
            if first is None and b'"text":"' in buf and b'"text":""' not in buf.split(b"\n\n")[0]:
                first = time.perf_counter() - start
            if buf.endswith(b"\r\n0\r\n\r\n"):
                if b"[DONE]" not in buf:
                    raise RuntimeError(f"no [DONE] in the answer: {buf[:300]!r}")
                break
        return first if first is not None else time.perf_counter() - start

    def close(self) -> None:
        self.sock.close()


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    args = parse_args(__doc__ or "")
    n = 300 if args.quick else 3000
    worker, router = free_port(), free_port()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        from tests.worker.generation.tiny import build_tiny_gpt2

        model = build_tiny_gpt2(tmp / "tiny")
        snap = RoutingSnapshot(
            version=1, generated_at=0.0,
            regions=(RegionView("local", HealthState.HEALTHY, 50.1, 8.7, capacity_rps=1e6,
                workers=(WorkerView("w1", f"http://127.0.0.1:{worker}", HealthState.HEALTHY,
                                    ("tiny:1",)),),
            ),),
        )  # fmt: skip
        (tmp / "snapshot.json").write_bytes(snap.to_json())
        stack.enter_context(_process(
            [py, "-m", "meridian", "worker", "--http-port", str(worker), "--grpc-port", "-1",
             "--model", f"tiny:1={model}"], worker,
        ))  # fmt: skip
        stack.enter_context(_process(
            [py, "-m", "meridian", "router", "--port", str(router),
             "--snapshot-path", str(tmp / "snapshot.json")], router,
        ))  # fmt: skip
        direct, via = _Client(worker), _Client(router)
        for _ in range(20):  # warm up both paths
            direct.ttft()
            via.ttft()
        d_times, r_times, added = [], [], []
        for i in range(n):
            if i % 2:
                d, r = direct.ttft(), via.ttft()
            else:
                r, d = via.ttft(), direct.ttft()
            d_times.append(d * 1000)
            r_times.append(r * 1000)
            added.append((r - d) * 1000)
        direct.close()
        via.close()
    rows = [
        ["direct to the worker", _pct(d_times, 0.5), _pct(d_times, 0.9), _pct(d_times, 0.99)],
        ["through the router", _pct(r_times, 0.5), _pct(r_times, 0.9), _pct(r_times, 0.99)],
        ["added by the router (paired)", statistics.median(added), _pct(added, 0.9),
         _pct(added, 0.99)],
    ]  # fmt: skip
    body = (
        f"{n} streamed completions per path, alternated; TTFT in ms (tiny GPT-2 on CPU)\n\n"
        + table(["path", "p50 ms", "p90 ms", "p99 ms"], rows)
        + f"\n\nratio router/direct TTFT p50: {_pct(r_times, 0.5) / _pct(d_times, 0.5):.3f}"
    )
    figures = {
        "ttft_direct_p50_ms": round(_pct(d_times, 0.5), 3),
        "ttft_router_p50_ms": round(_pct(r_times, 0.5), 3),
        "ttft_added_p50_ms": round(statistics.median(added), 3),
        "ttft_ratio_p50": round(_pct(r_times, 0.5) / _pct(d_times, 0.5), 3),
    }
    record("router_stream", "Time to first token through the router (bench.router_stream)",
           body, figures, quick=args.quick, write=not args.no_write)  # fmt: skip


if __name__ == "__main__":
    main()
