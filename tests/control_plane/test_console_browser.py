"""The operator's console in a real browser (headless Chromium, Selenium) against a real
control plane with real region agents streaming to it over gRPC.

The map draws one marker per region; an agent that dies turns its region's marker to
the down colour within 3 s; a read token sees no drain button, an admin's drain and
undrain work; a rollout made through the API shows on the rollouts page and moves live,
a read token sees no action on it and an admin's pause shows; 50 regions update
smoothly; the browser logs no error. Screenshots of the
map and a region page go to ``$MERIDIAN_TEST_ARTIFACTS/console`` (else the test's tmp).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from meridian.waiting import wait_until
from region_agent.gpus import Fault
from tests.console_support import (
    ADMIN_TOKEN,
    READ_TOKEN,
    SITES,
    ConsoleFleet,
    admin_call,
    artifact_dir,
    browser,
    console_fleet_factory,
    create_rollout,
    many_sites,
)

__all__ = ["browser", "console_fleet_factory"]  # fixtures

DOWN_COLOUR = "#d63b3b"
# clients in world cities, and the regions a router sent them to
CITY_FLOWS = [
    (40.7, -74.0, "us-east", 120), (51.5, -0.1, "eu-west", 90), (52.5, 13.4, "eu-central", 60),
    (35.7, 139.8, "ap-northeast", 80), (19.0, 72.9, "ap-south", 50), (-23.6, -46.6, "sa-east", 30),
    (37.8, -122.4, "us-west", 70), (-33.9, 151.2, "ap-northeast", 25),
]  # fmt: skip


def sign_in(driver: Any, fleet: ConsoleFleet, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{fleet.url}/ui")
    wait_until(lambda: driver.find_elements(By.ID, "token"), timeout=10, what="sign-in form")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    wait_until(lambda: driver.find_element(By.ID, "status").text == "live", timeout=10, what="live")


def markers(driver: Any) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    return {
        m.get_attribute("data-region"): m
        for m in driver.find_elements(By.CSS_SELECTOR, "circle.region")
    }


def states(driver: Any) -> dict[str, str]:
    return driver.execute_script(  # type: ignore[no-any-return]
        "return Object.fromEntries([...document.querySelectorAll('circle.region')]"
        ".map(c => [c.dataset.region, c.dataset.state]))"
    )


def report_traffic(fleet: ConsoleFleet, interval_s: float = 2.0) -> None:
    """What a router reports (with its read token): requests per client area and region."""
    body = {
        "router": "router-test",
        "interval_s": interval_s,
        "flows": [
            {"lat": lat, "lon": lon, "region": region, "requests": n}
            for lat, lon, region, n in CITY_FLOWS
        ],
        "regions": [{"region": "us-east", "streams": 10, "ttft_ms": 42.0}],
    }
    answer = httpx.post(
        f"{fleet.url}/v1/traffic",
        json=body,
        headers={"Authorization": f"Bearer {READ_TOKEN}"},
        timeout=5,
    )
    assert answer.status_code == 202, answer.text


def texts(driver: Any, css: str) -> list[str]:
    """The text of each element ``css`` selects, read at once (the page redraws often)."""
    return driver.execute_script(  # type: ignore[no-any-return]
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", css
    )


def browser_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_map_shows_each_region_and_a_dead_agent_within_3s(
    console_fleet_factory: Any, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    fleet = console_fleet_factory(SITES)
    sign_in(browser, fleet, READ_TOKEN)
    wait_until(
        lambda: set(states(browser).items()) == {(name, "healthy") for name in SITES},
        timeout=15,
        what="every region's marker, healthy",
    )
    assert sorted(markers(browser)) == sorted(SITES)  # one marker per region
    report_traffic(fleet)
    wait_until(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "path.arc")) == len(CITY_FLOWS),
        timeout=10,
        what="an arc per client area and region",
    )
    widths = {
        a.get_attribute("data-region"): float(a.get_attribute("stroke-width"))
        for a in browser.find_elements(By.CSS_SELECTOR, "path.arc")
    }
    assert widths["us-east"] > widths["sa-east"]  # thicker for more requests
    [age] = texts(browser, "#snapshot-age")
    assert "s old" in age and "1 router" in age, age
    # everything the page loaded came from the control plane: it works offline
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded and all(u.startswith(f"{fleet.url}/") for u in loaded), loaded
    assert {u.removeprefix(fleet.url) for u in loaded} >= {
        "/ui/static/console.js",
        "/ui/static/console.css",
    }
    out = artifact_dir(tmp_path)
    browser.save_screenshot(str(out / "console-map.png"))

    killed = time.monotonic()
    fleet.kill_agent("eu-west")
    wait_until(lambda: states(browser)["eu-west"] == "down", timeout=3.0, what="eu-west down")
    took = time.monotonic() - killed
    print(f"a dead agent's marker turned down {took:.2f}s after the kill")
    assert markers(browser)["eu-west"].get_attribute("fill") == DOWN_COLOUR
    assert {s for r, s in states(browser).items() if r != "eu-west"} == {"healthy"}
    browser.save_screenshot(str(out / "console-map-region-down.png"))

    # a read token sees the region's page, and no drain button
    browser.get(f"{fleet.url}/ui#/region/us-east")
    wait_until(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "table.gpus tbody tr")) == 8,
        timeout=10,
        what="us-east's 8 GPUs",
    )
    wait_until(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, ".charts .uplot")) == 2,
        timeout=10,
        what="the charts",
    )
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-role") == "read"
    assert not browser.find_elements(By.ID, "drain")
    assert not browser.find_elements(By.ID, "undrain")
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.workers tbody tr")) == 8
    # an uncorrectable ECC error (XID 48) on GPU 3 shows in its row
    fleet.inject("us-east", 3, Fault.ECC_UNCORRECTABLE)
    wait_until(
        lambda: texts(browser, "table.gpus tr.cond-failed td:first-child") == ["3"],
        timeout=5,
        what="GPU 3 failed",
    )
    [row] = texts(browser, "table.gpus tr.cond-failed")
    assert "0 / 1" in row and "48" in row, row  # ECC corrected / uncorrected, the XID
    wait_until(
        lambda: texts(browser, ".region-head .facts")[0].startswith("7/8 GPUs healthy"),
        timeout=5,
        what="7 of 8 GPUs healthy",
    )
    browser.save_screenshot(str(out / "console-region.png"))
    errors = browser_errors(browser)
    assert errors == [], errors


def test_an_admin_drains_and_undrains_a_region(
    console_fleet_factory: Any, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    fleet = console_fleet_factory({k: SITES[k] for k in ("us-east", "eu-west")})
    sign_in(browser, fleet, ADMIN_TOKEN)
    browser.get(f"{fleet.url}/ui#/region/eu-west")
    wait_until(lambda: browser.find_elements(By.ID, "drain"), timeout=10, what="drain button")
    browser.find_element(By.ID, "drain").click()
    wait_until(
        lambda: fleet.snapshot_states()["eu-west"] == "draining", timeout=10, what="draining"
    )
    wait_until(lambda: browser.find_elements(By.ID, "undrain"), timeout=5, what="undrain button")
    assert texts(browser, ".region-head .badge") == ["draining"]
    browser.find_element(By.ID, "undrain").click()
    wait_until(
        lambda: fleet.snapshot_states()["eu-west"] == "healthy", timeout=10, what="undrained"
    )
    wait_until(lambda: browser.find_elements(By.ID, "drain"), timeout=5, what="drain again")

    # the audit log, filtered to drains, names who did it
    browser.get(f"{fleet.url}/ui#/audit")
    action = browser.find_element(By.NAME, "action")
    action.send_keys("drain")
    action.submit()

    def drained_rows() -> list[str]:
        return texts(browser, "table.audit tbody tr")

    wait_until(lambda: len(drained_rows()) == 1, timeout=10, what="the drain in the audit log")
    assert "console-admin" in drained_rows()[0]

    browser.get(f"{fleet.url}/ui#/deployments")
    wait_until(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "table.deployments tbody tr")) == 2,
        timeout=10,
        what="both deployments",
    )
    errors = browser_errors(browser)
    assert errors == [], errors


def sign_out(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "sign-out").click()
    wait_until(lambda: driver.find_elements(By.ID, "token"), timeout=10, what="signed out")


def test_rollouts_page_follows_a_rollout_and_an_admin_pauses_it(
    console_fleet_factory: Any, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    fleet = console_fleet_factory({k: SITES[k] for k in ("us-east", "eu-west")})
    created = create_rollout(fleet, [["eu-west"], ["us-east"]])
    rid = created["id"]
    row = f"table.rollouts tr[data-rollout='{rid}']"

    sign_in(browser, fleet, READ_TOKEN)
    browser.get(f"{fleet.url}/ui#/rollouts")
    wait_until(lambda: texts(browser, row), timeout=10, what="the rollout's row")
    [text] = texts(browser, row)
    assert "resnet" in text and "1 → 2" in text and "starting workers" in text, text
    assert texts(browser, f"{row} .rollout-state") == ["running"]
    # the new version's workers come up in the first wave: the rollout moves to its first
    # step, live (the controller moves it; the page only follows the stream)
    fleet.loop.call_soon_threadsafe(
        setattr, fleet.agents["eu-west"].supervisor, "models", ("resnet:1", "resnet:2")
    )
    wait_until(
        lambda: "wave 1/2 · step 1/2 (10%)" in texts(browser, row)[0],
        timeout=15,
        what="the first step on the page",
    )
    [text] = texts(browser, row)
    assert "10%" in text and "wave 1: 10% of traffic" in text, text

    # its page: the waves, and the gate of the current wave's region, waiting for requests
    browser.find_element(By.CSS_SELECTOR, f"{row} a").click()
    wait_until(
        lambda: texts(browser, "table.gates tr[data-region='eu-west'] .badge") == ["wait"],
        timeout=15,
        what="eu-west's gate waiting",
    )
    [gate] = texts(browser, "table.gates tr[data-region='eu-west']")
    assert "of 20 requests" in gate, gate
    waves = texts(browser, "table.waves tbody tr")
    assert len(waves) == 2 and "eu-west" in waves[0] and "current" in waves[0], waves
    assert "us-east" in waves[1] and "pending" in waves[1], waves
    assert texts(browser, "table.waves tbody td:nth-child(2)") == ["eu-west", "us-east"]
    # the gates' settings come from GET /v1/rollouts/ID (as its ETag does)
    wait_until(
        lambda: any(t.startswith("Gates: at least 20 requests") for t in texts(browser, ".facts")),
        timeout=5,
        what="the gates' settings",
    )
    # a read token is offered no action
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-role") == "read"
    assert not browser.find_elements(By.CSS_SELECTOR, "#rollout-actions button")
    browser.save_screenshot(str(artifact_dir(tmp_path) / "console-rollout.png"))

    # an admin pauses it (with the ETag the page read): the page shows it paused
    sign_out(browser)
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.ID, "sign-in").click()
    wait_until(lambda: browser.find_element(By.ID, "status").text == "live", timeout=10,
               what="live")  # fmt: skip
    browser.get(f"{fleet.url}/ui#/rollouts/{rid}")
    wait_until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#rollout-pause:not([disabled])"),
        timeout=10,
        what="the pause button",
    )
    labels = texts(browser, "#rollout-actions button")
    assert labels == ["Pause", "Promote", "Abort"], labels
    browser.find_element(By.ID, "rollout-pause").click()
    wait_until(
        lambda: texts(browser, ".rollout-head .badge") == ["paused"],
        timeout=10,
        what="paused on the page",
    )
    answer = admin_call(fleet, "GET", f"/v1/rollouts/{rid}").json()
    assert answer["state"] == "paused" and answer["reason"] == "paused by console-admin"
    wait_until(lambda: texts(browser, "#rollout-actions button") == ["Resume", "Promote", "Abort"],
               timeout=5, what="resume offered")  # fmt: skip
    browser.get(f"{fleet.url}/ui#/rollouts")
    wait_until(
        lambda: texts(browser, f"{row} .rollout-state") == ["paused"],
        timeout=10,
        what="paused in the list",
    )
    browser.save_screenshot(str(artifact_dir(tmp_path) / "console-rollouts.png"))
    errors = browser_errors(browser)
    assert errors == [], errors


def test_fifty_regions_update_smoothly(console_fleet_factory: Any, browser: Any) -> None:
    sites = many_sites(50)
    fleet = console_fleet_factory(sites)
    sign_in(browser, fleet, READ_TOKEN)
    wait_until(
        lambda: list(states(browser).values()).count("healthy") == 50,
        timeout=30,
        what="50 healthy markers",
    )
    before = browser.execute_script("return {...window.meridianConsole}")
    wait_until(
        lambda: (
            browser.execute_script("return window.meridianConsole.updates")
            >= before["updates"] + 20
        ),
        timeout=30,
        what="20 more updates",
    )
    stats = browser.execute_script("return window.meridianConsole")
    mean = (stats["totalMs"] - before["totalMs"]) / (stats["updates"] - before["updates"])
    took = f"mean {mean:.2f} ms, max {stats['maxMs']:.1f} ms"
    print(f"50 regions: {stats['updates']} updates of the map and table, {took}")
    assert mean < 16.0  # within one frame at 60 Hz
    assert stats["maxMs"] < 250.0
    errors = browser_errors(browser)
    assert errors == [], errors


@pytest.mark.parametrize("token", ["", "not-a-token"])
def test_the_page_refuses_a_bad_token(console_fleet_factory: Any, browser: Any, token: str) -> None:
    from selenium.webdriver.common.by import By

    fleet = console_fleet_factory({"us-east": SITES["us-east"]}, agents=False)
    browser.get(f"{fleet.url}/ui")
    wait_until(lambda: browser.find_elements(By.ID, "token"), timeout=10, what="sign-in form")
    browser.find_element(By.ID, "token").send_keys(token or " ")
    browser.find_element(By.ID, "sign-in").click()
    wait_until(
        lambda: "refused" in browser.find_element(By.CSS_SELECTOR, ".sign-in .error").text,
        timeout=5,
        what="the refusal",
    )
    assert not browser.find_elements(By.CSS_SELECTOR, "circle.region")
