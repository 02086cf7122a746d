"""``meridian demo`` prints the console's address and a token to sign in with, and the
console's event stream shows the region the demo kills go down as it happens, and the
client cities the demo's router reports, with the regions serving them."""

from __future__ import annotations

import pytest

from tests.demo.conftest import DemoRun

pytestmark = pytest.mark.slow


def test_the_demo_prints_the_console_and_it_shows_the_failure(demo_run: DemoRun) -> None:
    assert demo_run.admin_token_printed, demo_run.stdout[-3000:]
    page = demo_run.console_page
    assert page.status_code == 200 and "console.js" in page.text
    failed = demo_run.result["failed_region"]
    killed_at = next(t for t, line in demo_run.lines if f"killing region {failed}" in line)
    follower = demo_run.follower
    states = [(t, regions.get(failed)) for t, regions in follower.seen]
    assert any(s == "healthy" for t, s in states if t < killed_at), states[:5]
    down = [t for t, s in states if t > killed_at and s == "down"]
    assert down, states[-5:]
    print(f"the console showed {failed} down {down[0] - killed_at:.1f}s after the kill")
    # the router reported where its clients are (the demo's seven cities) and where they
    # were served: the arcs of the map
    served = set().union(*follower.areas.values())
    assert len(follower.areas) == 7, follower.areas
    assert served and served <= set(demo_run.result["regions"]), follower.areas
    assert down[0] - killed_at < 10.0  # missed heartbeats (3 report intervals) and publishing
