"""The Grafana dashboards query only metrics the processes really export.

A real worker (a tiny generative model and an embedding model) behind a real router;
one plain and one streamed request through the router, then both ``/metrics`` are
scraped. Every metric name in every panel's PromQL (and in the dashboards' variables)
must be one of the exported series, and every ``event`` label value the router
dashboard filters on must be an outcome the router counts.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from router.policies import NearestPolicy
from router.server import RouterServer
from router.settings import RouterSettings
from tests.worker.conftest import WorkerProcess, running_worker
from tests.worker.generation.tiny import build_tiny_gpt2
from tests.worker.text_model import build_text_model

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana"

# series each family type exposes (prometheus_client's naming): a counter ``x`` is
# queried as ``x_total``, a histogram as ``x_bucket``/``x_sum``/``x_count``
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "untyped": ("",),
    "info": ("_info",),
}

# PromQL words that are not metric names
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
NUMBER = re.compile(r"(?<![A-Za-z0-9_:.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*")
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def exported_series(text: str) -> set[str]:
    """Every series name a scrape can hold, for families with or without samples yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names and
    values, durations and Grafana variables left out)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = GROUPING.sub("", text)
    text = NUMBER.sub("", text)  # numbers and durations (1e-9, 0.99, 5m)
    names = set()
    for match in IDENT.finditer(text):
        word, rest = match.group(), text[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(word)
    return names


def event_values(expr: str) -> set[str]:
    """The values an expression's ``event`` matchers name (``=`` and ``=~`` alternatives)."""
    values: set[str] = set()
    for op, value in re.findall(r'\bevent\s*(=~|=)\s*"([^"]*)"', expr):
        values.update(value.split("|") if op == "=~" else [value])
    return values


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable of a dashboard."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            yield f"variable {variable['name']!r}", inner.group(1) if inner else query


def router_counted_events() -> set[str]:
    """The outcomes the router counts (``counters["..."] += 1`` in its code)."""
    source = "".join(p.read_text() for p in (ROOT / "router").rglob("*.py"))
    return set(re.findall(r'counters\["([a-z0-9_]+)"\]', source))


@pytest.fixture(scope="module")
def lm_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    root = tmp_path_factory.mktemp("grafana-worker")
    lm = build_tiny_gpt2(root / "tiny")
    build_text_model(root / "text.onnx")
    with running_worker([f"tiny:1={lm}", f"text:1={root / 'text.onnx'}"], root) as worker:
        yield worker


def test_the_extractor_reads_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (region, le) (rate(a_bucket{job=~"$job", le="+Inf"}'
        "[$__rate_interval]))) / clamp_min(sum without (instance) (b_total offset 5m), 1e-9)"
        ' + on (region) group_left (model) c:d{event=~"x|y"}'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c:d"}
    assert event_values(expr) == {"x", "y"}
    text = "# HELP x_total X\n# TYPE x_total counter\n# HELP h H\n# TYPE h histogram\n"
    assert {"x_total", "h_bucket", "h_count"} <= exported_series(text)


async def test_every_panel_queries_an_exported_metric(
    lm_worker: WorkerProcess, tmp_path: Path
) -> None:
    region = RegionView(
        name="local-1",
        state=HealthState.HEALTHY,
        lat=10.0,
        lon=10.0,
        capacity_rps=100.0,
        workers=(
            WorkerView("local-1-w1", lm_worker.http_url, HealthState.HEALTHY, ("tiny:1", "text:1")),
        ),
    )
    server = RouterServer(
        RouterSettings(port=0, snapshot_path=tmp_path / "snap.json"), NearestPolicy()
    )
    server.store.offer(RoutingSnapshot(version=1, generated_at=time.time(), regions=(region,)))
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            r = await c.post("/v1/embeddings", json={"model": "text", "input": ["hello world"]})
            assert r.status_code == 200, r.text
            body = {"model": "tiny", "prompt": "The quick", "max_tokens": 4, "temperature": 0}
            r = await c.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            async with c.stream("POST", "/v1/completions", json=body | {"stream": True}) as s:
                assert s.status_code == 200
                streamed = [line async for line in s.aiter_lines() if line.startswith("data:")]
            assert streamed[-1] == "data: [DONE]"
            router_text = (await c.get("/metrics")).text
            worker_text = (await c.get(f"{lm_worker.http_url}/metrics")).text
    finally:
        await server.stop()

    exported = {
        "router": exported_series(router_text),
        "worker": exported_series(worker_text),
    }
    # traffic made the labelled series appear, not only their families
    assert 'meridian_router_events_total{event="streamed"}' in router_text
    assert "meridian_worker_time_to_first_token_seconds_bucket{" in worker_text
    assert 'meridian_worker_requests_total{model="text:1",outcome="ok"}' in worker_text
    assert 'meridian_router_region_circuit_open{region="local-1"}' in router_text

    events = router_counted_events()
    assert {"served", "failed", "streamed"} <= events
    files = sorted(DASHBOARDS.glob("*.json"))
    assert [f.name for f in files] == ["meridian-router.json", "meridian-worker.json"]
    checked = 0
    for path in files:
        dashboard = json.loads(path.read_text())
        process = dashboard["uid"].removeprefix("meridian-")
        queried: set[str] = set()
        for where, expr in dashboard_queries(dashboard):
            names = metric_names(expr)
            assert names, f"{path.name}: {where}: no metric in {expr!r}"
            unknown = names - exported[process]
            assert not unknown, f"{path.name}: {where}: {sorted(unknown)} not exported"
            strange = event_values(expr) - events
            assert not strange, f"{path.name}: {where}: the router counts no {sorted(strange)}"
            queried |= names
            checked += 1
        # the dashboard covers the process: each exported family shows up somewhere
        text = router_text if process == "router" else worker_text
        families = {
            f.name
            for f in text_string_to_metric_families(text)
            if not f.name.endswith("_created")  # creation times: nothing to chart
        }
        shown = {f for f in families if any(q.startswith(f) for q in queried)}
        assert families - shown == set(), f"{path.name} leaves out {sorted(families - shown)}"
    assert checked >= 30
