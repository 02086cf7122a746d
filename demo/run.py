"""``meridian demo``: the whole system on this machine, traffic from world cities, a failover.

Every part runs as a real process: the control plane (SQLite, in-process
coordination), one agent per region with simulated GPUs (each starting its
worker processes as directed), and the router (HTTPS, self-signed). Clients in
world cities send text and get embeddings back; distance is emulated on the
router's upstream hop from the latency model, since every socket here is
loopback. Halfway through, the region serving the most cities is killed (agent
and workers) and traffic moves with no failed request.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.fleet import LocalFleet
from demo.geography import CITIES, REGIONS, RegionSite
from demo.model import prepare
from demo.processes import Child
from demo.traffic import Traffic

__all__ = ["DemoOptions", "run_demo"]

MODEL = "minilm"


@dataclass
class DemoOptions:
    workdir: Path = Path("var/demo")
    regions: int = 4
    rate: float = 3.0  # requests/s per city
    steady_s: float = 15.0
    after_failure_s: float = 15.0
    fail: bool = True
    json_out: Path | None = None
    variant: str = "int8"


@dataclass
class Phase:
    name: str
    seconds: float


def _say(text: str) -> None:
    print(text, flush=True)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _city_rows(traffic: Traffic, current: dict[str, str]) -> list[list[str]]:
    rows = [["client city", "now served by", "requests", "p50 ms", "p99 ms", "retried", "errors"]]
    for city in traffic.cities:
        s = traffic.stats[city.name].summary()
        rows.append(
            [
                city.name,
                current.get(city.name, "-"),
                str(s["requests"]),
                f"{s['p50_ms']:.0f}",
                f"{s['p99_ms']:.0f}",
                str(s["retried"]),
                str(s["errors"]),
            ]
        )
    return rows


def run_demo(opts: DemoOptions) -> int:
    sites = REGIONS[: opts.regions]
    run_dir = opts.workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    fleet = LocalFleet(run_dir)
    started = time.monotonic()
    try:
        _say("1/5 preparing the model (all-MiniLM-L6-v2 -> ONNX, int8 variant; cached)")
        model = prepare()
        _say(f"    int8 variant: max abs error {model.int8_max_abs_error:.3f} on probe sentences")
        admin = fleet.start_control_plane()
        _say(f"2/5 control plane on {fleet.base_url} (agents: gRPC :{fleet.grpc_port})")
        admin.register_model(
            MODEL, "1", model.fp32, int8=model.int8, int8_error=model.int8_max_abs_error
        )
        _say(f"3/5 {len(sites)} regions, one agent each with 2 simulated GPUs")
        for site in sites:
            fleet.add_region(admin, site, [(MODEL, "1", opts.variant or None)])
        api_key = admin.api_key("demo-clients", rate_per_s=10_000, burst=1_000)
        admin.close()
        tls_dir = opts.workdir / "tls"
        _, router_port = fleet.start_router(tls_dir=tls_dir, emulate_wan=True, require_api_key=True)
        _say(
            f"4/5 router on https://127.0.0.1:{router_port} (WAN latency emulated; clients "
            "present an API key issued through /v1/api-keys)"
        )
        fleet.wait_serving({s.name for s in sites}, report=lambda s: _say("    " + s))
        _say(f"    every region serves '{MODEL}' ({time.monotonic() - started:.0f}s since start)")
        result = asyncio.run(
            _drive(opts, router_port, str(tls_dir / "router.crt"), api_key, fleet.agents, sites)
        )
        result["startup_s"] = round(time.monotonic() - started, 1)
        out = opts.json_out or (opts.workdir / "result.json")
        out.write_text(json.dumps(result, indent=2))
        _say(f"\nresults written to {out}")
        return 0 if result["failed_requests"] == 0 else 1
    except KeyboardInterrupt:
        _say("\ninterrupted: stopping every process")
        return 130
    finally:
        fleet.stop()


async def _drive(
    opts: DemoOptions,
    router_port: int,
    ca_file: str,
    api_key: str,
    agents: dict[str, Child],
    sites: tuple[RegionSite, ...],
) -> dict[str, Any]:
    traffic = Traffic(
        f"https://127.0.0.1:{router_port}", CITIES, opts.rate, MODEL, ca_file, api_key=api_key
    )
    phases = [Phase("steady", opts.steady_s)]
    if opts.fail:
        phases.append(Phase("after failure", opts.after_failure_s))
    failed_region = ""
    summaries: dict[str, dict[str, dict[str, object]]] = {}
    try:
        await traffic.run(1.0)  # warm-up: connections, caches, first batches
        for i, phase in enumerate(phases):
            if i == 1:
                counts: dict[str, int] = {}
                for s in traffic.stats.values():
                    for region, n in s.regions.items():
                        counts[region] = counts.get(region, 0) + n
                failed_region = max(counts, key=lambda r: counts[r])
                _say(f"\n*** killing region {failed_region} (its agent and workers) ***\n")
                agents[failed_region].kill_group()
            traffic.stats.clear()
            _say(f"5/5 traffic: {len(CITIES)} cities x {opts.rate:g} req/s, phase '{phase.name}'")
            runner = asyncio.create_task(traffic.run(phase.seconds))
            while not runner.done():
                await asyncio.wait({runner}, timeout=3.0)
                _say(_table(_city_rows(traffic, traffic.take_recent())) + "\n")
            summaries[phase.name] = {c.name: traffic.stats[c.name].summary() for c in CITIES}
    finally:
        await traffic.close()
    failed = sum(int(str(s["errors"])) for p in summaries.values() for s in p.values())
    sent = sum(int(str(s["requests"])) for p in summaries.values() for s in p.values())
    for name, table in summaries.items():
        _say(f"\nphase '{name}':")
        _say(_table(_summary_rows(table)))
    killed = f"; region {failed_region} was killed mid-run" if failed_region else ""
    _say(f"\n{sent} requests, {failed} failed{killed}")
    return {
        "regions": [s.name for s in sites],
        "failed_region": failed_region,
        "requests": sent,
        "failed_requests": failed,
        "phases": summaries,
    }


def _summary_rows(table: dict[str, dict[str, object]]) -> list[list[str]]:
    rows = [["client city", "served by (requests)", "p50 ms", "p99 ms", "retried", "errors"]]
    for city, s in table.items():
        regions = s["regions"]
        assert isinstance(regions, dict)
        served = ", ".join(f"{r} ({n})" for r, n in regions.items()) or "-"
        rows.append(
            [city, served, f"{s['p50_ms']:.0f}", f"{s['p99_ms']:.0f}", str(s["retried"]),
             str(s["errors"])]
        )  # fmt: skip
    return rows
