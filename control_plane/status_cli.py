"""``meridian status``: the fleet at a glance, read from the admin API with a read token.

Three tables: regions (registry status, health state and its reason, GPUs, workers, agent
link), traffic (requests per second each region serves now, its share of the fleet's,
requests in flight and queued, against its capacity) and deployments (model versions per
region with their traffic weight and the share of the model's traffic that weight gives).
The routing snapshot's version and age head it. ``--output json`` prints the same as one
JSON document, for scripts.

The token comes from ``--token``, ``--token-file``, ``MERIDIAN_READ_TOKEN`` or
``MERIDIAN_ADMIN_TOKEN``, in that order; a read token is enough. The control plane's URL
comes from ``--control-plane`` or ``MERIDIAN_CONTROL_PLANE``. Exit status: 0 shown,
1 the control plane refused or could not be reached, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from control_plane.cli_auth import (
    CliUsageError,
    add_connection_arguments,
    control_plane_url,
    resolve_token,
)

if TYPE_CHECKING:
    import httpx
    from rich.console import Console

__all__ = ["StatusError", "add_arguments", "gather", "main"]

TOKEN_ENVS = ("MERIDIAN_READ_TOKEN", "MERIDIAN_ADMIN_TOKEN")
PAGE = 500  # the admin API's largest page
STATE_STYLE = {"healthy": "green", "degraded": "yellow", "draining": "cyan", "down": "red"}


class StatusError(Exception):
    """The control plane refused, or could not be reached; the message says why."""


def _get(http: httpx.Client, path: str, **params: Any) -> httpx.Response:
    import httpx

    try:
        response = http.get(path, params=params or None)
    except httpx.TransportError as exc:
        raise StatusError(f"cannot reach the control plane at {http.base_url}: {exc}") from exc
    if response.status_code in (401, 403):
        hint = "check the token" if response.status_code == 401 else "the token needs read scope"
        raise StatusError(f"GET {path}: {response.status_code} ({hint})")
    return response


def _ok(response: httpx.Response) -> Any:
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            detail = response.text
        raise StatusError(f"GET {response.request.url.path}: {response.status_code} {detail}")
    return response.json()


def _all(http: httpx.Client, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        page = _ok(_get(http, path, limit=PAGE, offset=len(items)))
        items.extend(page["items"])
        if not page["items"] or len(items) >= page["total"]:
            return items


def gather(http: httpx.Client, *, now: float | None = None) -> dict[str, Any]:
    """The fleet's status as plain data (what ``--output json`` prints)."""
    now = time.time() if now is None else now
    registered = _all(http, "/v1/regions")
    deployments = _all(http, "/v1/deployments")
    from meridian.snapshot import RoutingSnapshot

    response = _get(http, "/v1/routing/snapshot")  # 503: none published yet
    snapshot = RoutingSnapshot.from_dict(_ok(response)) if response.status_code != 503 else None
    views = {r.name: r for r in snapshot.regions} if snapshot is not None else {}

    regions, traffic = [], []
    for reg in sorted(registered, key=lambda r: r["name"]):
        name = reg["name"]
        view = views.get(name)
        health: Mapping[str, Any] = {}
        if view is not None:
            reply = _get(http, f"/v1/regions/{name}/health")
            health = _ok(reply) if reply.status_code != 404 else {}
        workers = view.workers if view else ()
        regions.append(
            {
                "name": name,
                "provider": reg["provider"],
                "status": reg["status"],
                "state": view.state.value if view else "unpublished",
                "reason": health.get("reason", "" if view else "not in the routing snapshot"),
                "agent_connected": bool(health.get("agent_connected", False)),
                "last_report_age_s": health.get("last_report_age_s"),
                "gpu_type": reg["gpu_type"],
                "gpus": reg["gpu_count"],
                "healthy_gpus": view.healthy_gpus if view else 0,
                "workers": len(workers),
                "ready_workers": sum(1 for w in workers if w.state.routable),
            }
        )
        rps = sum(w.throughput_rps for w in workers)
        traffic.append(
            {
                "region": name,
                "throughput_rps": round(rps, 2),
                "in_flight": sum(w.in_flight for w in workers),
                "queue_depth": sum(w.queue_depth for w in workers),
                "capacity_rps": round(view.capacity_rps if view else 0.0, 2),
            }
        )
    fleet_rps = sum(t["throughput_rps"] for t in traffic)
    for t in traffic:
        t["share"] = round(t["throughput_rps"] / fleet_rps, 4) if fleet_rps else 0.0

    weights: dict[str, float] = {}
    for d in deployments:
        weights[d["model"]] = weights.get(d["model"], 0.0) + float(d["traffic_weight"])
    placed = []
    for d in sorted(deployments, key=lambda d: (d["model"], d["version"], d["region"])):
        total = weights[d["model"]]
        view = views.get(d["region"])
        placed.append(
            {
                "id": d["id"],
                "model": d["model"],
                "version": d["version"],
                "variant": d.get("variant"),
                "region": d["region"],
                "replicas": [d["min_replicas"], d["max_replicas"]],
                "traffic_weight": d["traffic_weight"],
                "traffic_share": round(float(d["traffic_weight"]) / total, 4) if total else 0.0,
                "serving": view is not None and view.serves(d["model"]),
            }
        )
    return {
        "control_plane": str(http.base_url),
        "snapshot": {
            "version": snapshot.version if snapshot else 0,
            "age_s": round(max(0.0, now - snapshot.generated_at), 3) if snapshot else None,
        },
        "regions": regions,
        "traffic": traffic,
        "deployments": placed,
    }


def render(status: Mapping[str, Any], console: Console) -> None:
    """``status`` as rich tables."""
    from rich.table import Table

    snap = status["snapshot"]
    age = "none published" if snap["age_s"] is None else f"{snap['age_s']:.1f} s old"
    console.print(
        f"[bold]{status['control_plane']}[/bold]  routing snapshot {snap['version']} ({age})"
    )

    regions = Table(title="Regions", title_justify="left")
    for column in ("region", "provider", "status", "health", "reason", "GPUs", "workers", "agent"):
        regions.add_column(column, overflow="fold")
    for r in status["regions"]:
        style = STATE_STYLE.get(r["state"], "dim")
        agent = "connected" if r["agent_connected"] else "[red]not connected[/red]"
        if r["agent_connected"] and r["last_report_age_s"] is not None:
            agent += f" ({r['last_report_age_s']:.0f} s)"
        gpus = f"{r['healthy_gpus']}/{r['gpus']} {r['gpu_type']}".strip()
        regions.add_row(
            r["name"], r["provider"], r["status"], f"[{style}]{r['state']}[/{style}]",
            r["reason"], gpus, f"{r['ready_workers']}/{r['workers']}", agent,
        )  # fmt: skip
    console.print(regions)

    traffic = Table(title="Traffic", title_justify="left")
    for column in ("region", "req/s", "share", "in flight", "queued", "capacity req/s"):
        traffic.add_column(column, justify="left" if column == "region" else "right")
    for t in status["traffic"]:
        traffic.add_row(
            t["region"], f"{t['throughput_rps']:.1f}", f"{t['share']:.0%}", str(t["in_flight"]),
            str(t["queue_depth"]), f"{t['capacity_rps']:.1f}",
        )  # fmt: skip
    console.print(traffic)

    deployments = Table(title="Deployments", title_justify="left")
    for column in ("id", "model", "region", "replicas", "weight", "share", "serving"):
        deployments.add_column(column, overflow="fold")
    for d in status["deployments"]:
        model = f"{d['model']}:{d['version']}" + (f" ({d['variant']})" if d["variant"] else "")
        deployments.add_row(
            str(d["id"]), model, d["region"], "{}..{}".format(*d["replicas"]),
            f"{d['traffic_weight']:g}", f"{d['traffic_share']:.0%}",
            "[green]yes[/green]" if d["serving"] else "[red]no[/red]",
        )  # fmt: skip
    if not status["deployments"]:
        console.print("Deployments: none")
    else:
        console.print(deployments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser, TOKEN_ENVS, "read or admin")
    parser.add_argument("--output", choices=("table", "json"), default="table")


def main(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console

    try:
        url = control_plane_url(args)
        token = resolve_token(args, TOKEN_ENVS, "a read")
    except CliUsageError as exc:
        print(f"meridian status: {exc}", file=sys.stderr)
        return 2
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=args.timeout
    ) as http:
        try:
            status = gather(http)
        except StatusError as exc:
            print(f"meridian status: {exc}", file=sys.stderr)
            return 1
    if args.output == "json":
        print(json.dumps(status, indent=2))
    else:
        render(status, Console(highlight=False))
    return 0
