"""``meridian demo``: the whole system on this machine, traffic from world cities, a failover.

Every part runs as a real process: the control plane (SQLite, in-process
coordination), one agent per region with simulated GPUs (each starting its
worker processes as directed), and the router. The demo makes a fleet CA in its
work directory and every wire is TLS: the admin API and the router serve HTTPS,
agents enroll and stream over mutual TLS, workers serve only the router's client
certificate; ``--insecure`` runs it all in plaintext instead. Clients in
world cities send text and get embeddings back, and stream chat completions from
a tiny GPT-2 deployed in every region; distance is emulated on the router's
upstream hop from the latency model, since every socket here is loopback. Halfway
through, the region serving the most cities is killed (agent and workers): traffic
moves with no failed request, and the streams in flight there continue from
another region (the router's mid-stream failover) with no broken stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from demo.chat import ChatTraffic
from demo.fleet import LocalFleet
from demo.geography import CITIES, REGIONS, RegionSite
from demo.model import prepare, prepare_lm
from demo.processes import Child
from demo.tables import city_rows, render, summary_rows
from demo.traffic import Traffic

__all__ = ["DemoOptions", "run_demo"]

MODEL = "minilm"
CHAT_MODEL = "tiny-chat"
LONG_ANSWER_TOKENS = 384  # the streams in flight when a region is killed


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
    chat_rate: float = 0.4  # chat streams/s started per city (0: no chat traffic)
    chat_tokens: int = 48  # tokens per chat answer
    insecure: bool = False  # plaintext on every wire instead of TLS from the demo's CA
    linger_s: float = 0.0  # keep the fleet up this long after the traffic (for the console)


@dataclass
class Phase:
    name: str
    seconds: float


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(opts: DemoOptions) -> int:
    sites = REGIONS[: opts.regions]
    run_dir = opts.workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    if opts.insecure:
        logging.getLogger("demo").warning(
            "warning: --insecure, so every wire (admin API, agent streams, workers, router) "
            "is PLAINTEXT"
        )
    fleet = LocalFleet(run_dir, ca_dir=None if opts.insecure else opts.workdir / "ca")
    scheme = "http" if opts.insecure else "https"
    started = time.monotonic()
    try:
        _say("1/5 preparing the models (all-MiniLM-L6-v2 -> ONNX, int8 variant; cached)")
        model = prepare()
        _say(f"    int8 variant: max abs error {model.int8_max_abs_error:.3f} on probe sentences")
        chat = opts.chat_rate > 0
        if chat:
            _say("    chat: a tiny GPT-2 (trained on first use, about 90 CPU-seconds; cached)")
            lm = prepare_lm()
        admin = fleet.start_control_plane()
        wire = "mutual TLS" if fleet.tls else "PLAINTEXT"
        _say(f"2/5 control plane on {fleet.base_url} (agents: gRPC :{fleet.grpc_port}, {wire})")
        if fleet.ca_file is not None:
            _say(f"    fleet CA: {fleet.ca_file} (trust it: curl --cacert {fleet.ca_file} ...)")
        _say(f"    console: {fleet.base_url}/ui (the map; watch the failover there)")
        _say(f"      sign in with the read token {fleet.read_token}")
        _say(f"      or, to drain regions too, the admin token {fleet.admin_token}")
        if fleet.ca_file is not None:
            _say("      (browsers warn of the demo's own CA: trust it, or run with --insecure)")
        admin.register_model(
            MODEL, "1", model.fp32, int8=model.int8, int8_error=model.int8_max_abs_error
        )
        deploy = [(MODEL, "1", opts.variant or None)]
        if chat:
            admin.register_generative(CHAT_MODEL, "1", lm)
            deploy.append((CHAT_MODEL, "1", None))
        served = [m for m, _, _ in deploy]
        _say(f"3/5 {len(sites)} regions, one agent each with 2 simulated GPUs, serving {served}")
        for site in sites:
            fleet.add_region(admin, site, deploy)
        api_key = admin.api_key("demo-clients", rate_per_s=10_000, burst=1_000)
        admin.close()
        _, router_port = fleet.start_router(emulate_wan=True, require_api_key=True)
        router_url = f"{scheme}://127.0.0.1:{router_port}"
        _say(
            f"4/5 router on {router_url} (WAN latency emulated; clients "
            "present an API key issued through /v1/api-keys)"
        )
        fleet.wait_serving(
            {s.name for s in sites}, report=lambda s: _say("    " + s), models=served
        )
        _say(f"    every region serves {served} ({time.monotonic() - started:.0f}s since start)")
        wires = _wires(fleet, router_port)
        if fleet.tls:
            refused = "refused" if wires["plaintext_refused"] else "ANSWERED"
            _say(f"    workers: {', '.join(wires['workers'])}; plaintext to the router: {refused}")
        ca_file = str(fleet.ca_file) if fleet.ca_file else None
        result = asyncio.run(_drive(opts, router_url, ca_file, api_key, fleet.agents, sites))
        result["tls"] = wires
        result["startup_s"] = round(time.monotonic() - started, 1)
        out = opts.json_out or (opts.workdir / "result.json")
        out.write_text(json.dumps(result, indent=2))
        _say(f"\nresults written to {out}")
        if opts.linger_s > 0:
            _say(f"the fleet stays up {opts.linger_s:g}s more for the console at "
                 f"{fleet.base_url}/ui (Ctrl-C stops it)")  # fmt: skip
            time.sleep(opts.linger_s)
        return 0 if result["failed_requests"] == 0 and result["broken_streams"] == 0 else 1
    except KeyboardInterrupt:
        _say("\ninterrupted: stopping every process")
        return 130
    finally:
        fleet.stop()


def _wires(fleet: LocalFleet, router_port: int) -> dict[str, Any]:
    """What each wire speaks: the schemes of the admin API, router and workers, and
    whether a plaintext request to the router's port is refused."""
    snap = fleet.snapshot()
    workers = sorted(
        {w["endpoint"].partition(":")[0] for r in snap.get("regions", []) for w in r["workers"]}
    )
    try:
        httpx.get(f"http://127.0.0.1:{router_port}/v2/health/ready", timeout=3.0)
        refused = False
    except httpx.TransportError:
        refused = True
    return {
        "scheme": "https" if fleet.tls else "http",
        "control_plane": fleet.base_url.partition(":")[0],
        "agents": "mtls" if fleet.tls else "plaintext",
        "workers": workers,
        "plaintext_refused": refused,
        "ca": str(fleet.ca_file) if fleet.ca_file else None,
    }


async def _drive(
    opts: DemoOptions,
    url: str,
    ca_file: str | None,
    api_key: str,
    agents: dict[str, Child],
    sites: tuple[RegionSite, ...],
) -> dict[str, Any]:
    traffic = Traffic(url, CITIES, opts.rate, MODEL, ca_file, api_key=api_key)
    chat = None
    if opts.chat_rate > 0:
        chat = ChatTraffic(
            url, CITIES, opts.chat_rate, CHAT_MODEL, ca_file, api_key, opts.chat_tokens
        )
    phases = [Phase("steady", opts.steady_s)]
    if opts.fail:
        phases.append(Phase("after failure", opts.after_failure_s))
    failed_region = ""
    in_flight: list[str] = []  # cities streaming from the killed region as it fails
    summaries: dict[str, dict[str, dict[str, object]]] = {}
    chat_runner = asyncio.create_task(chat.run()) if chat else None
    names = [c.name for c in CITIES]
    try:
        await traffic.run(1.0)  # warm-up: connections, caches, first batches
        for i, phase in enumerate(phases):
            if i == 1:
                failed_region = _busiest(traffic)
                if chat:  # streams in flight there when it fails
                    now = await chat.streaming(LONG_ANSWER_TOKENS)
                    in_flight = sorted(c for c, r in now.items() if r == failed_region)
                    _say(f"\n    chat streams in flight in {failed_region}: {in_flight or 'none'}")
                _say(f"\n*** killing region {failed_region} (its agent and workers) ***\n")
                if chat:
                    chat.killed = (failed_region, time.monotonic())
                agents[failed_region].kill_group()
            traffic.stats.clear()
            if chat:
                chat.phase = phase.name
            rates = f"{opts.rate:g} req/s" + (f" + {opts.chat_rate:g} chats/s" if chat else "")
            _say(f"5/5 traffic: {len(CITIES)} cities x {rates}, phase '{phase.name}'")
            runner = asyncio.create_task(traffic.run(phase.seconds))
            while not runner.done():
                await asyncio.wait({runner}, timeout=3.0)
                embed = {n: traffic.stats[n].summary() for n in names}
                live = _chat_summary(chat, phase.name)
                _say(render(city_rows(names, embed, live, traffic.take_recent())) + "\n")
            summaries[phase.name] = {n: traffic.stats[n].summary() for n in names}
    finally:
        if chat and chat_runner:
            chat.stop()  # every stream begun is waited for and counted
            await asyncio.gather(chat_runner, return_exceptions=True)
            await chat.close()
        await traffic.close()
    chats = {name: _chat_summary(chat, name) for name in summaries}
    failed = sum(int(str(s["errors"])) for p in summaries.values() for s in p.values())
    sent = sum(int(str(s["requests"])) for p in summaries.values() for s in p.values())
    streams = sum(int(str(s["streams"])) for p in chats.values() for s in p.values())
    broken = sum(int(str(s["broken"])) for p in chats.values() for s in p.values())
    continued = sum(int(str(s["continued"])) for p in chats.values() for s in p.values())
    for name, table in summaries.items():
        _say(f"\nphase '{name}':")
        _say(render(summary_rows(table, chats[name])))
    killed = f"; region {failed_region} was killed mid-run" if failed_region else ""
    _say(f"\n{sent} requests, {failed} failed{killed}")
    if chat:
        _say(
            f"{streams} chat streams, {broken} broken; {continued} in flight in "
            f"{failed_region or 'no killed region'} continued from another region"
        )
    return {
        "regions": [s.name for s in sites],
        "failed_region": failed_region,
        "requests": sent,
        "failed_requests": failed,
        "streams": streams,
        "broken_streams": broken,
        "continued_streams": continued,
        "streams_in_flight_at_kill": len(in_flight),
        "phases": summaries,
        "chat_phases": chats,
    }


def _busiest(traffic: Traffic) -> str:
    counts: dict[str, int] = {}
    for s in traffic.stats.values():
        for region, n in s.regions.items():
            counts[region] = counts.get(region, 0) + n
    return max(counts, key=lambda r: counts[r])


def _chat_summary(chat: ChatTraffic | None, phase: str) -> dict[str, dict[str, object]]:
    if chat is None:
        return {}
    return {name: s.summary() for name, s in chat.stats[phase].items()}
