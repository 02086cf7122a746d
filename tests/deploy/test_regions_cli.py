"""``meridian regions apply|delete`` against a real control plane process."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from control_plane.regions_cli import RegionRegistrar, RegionSpec
from meridian.cli import main
from meridian.net import free_port

from .conftest import ControlPlane, unique


def _apply(cp: ControlPlane, name: str, credential: Path, *extra: str) -> int:
    common = ["--control-plane", cp.url, "--token", cp.token, "--name", name]
    return main(["regions", "apply", *common, "--credential-file", str(credential), *extra])


def _delete(cp: ControlPlane, name: str, *extra: str) -> int:
    common = ["--control-plane", cp.url, "--token", cp.token, "--name", name]
    return main(["regions", "delete", *common, *extra])


def _agent_can_read(cp: ControlPlane, credential: str) -> int:
    with cp.client(credential) as http:
        return http.get("/v1/models").status_code


def test_apply_creates_then_is_idempotent_and_updates(
    control_plane: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cp, name = control_plane, unique("use1")
    cred = tmp_path / "state" / f"{name}.credential"
    fields = ["--provider", "aws", "--lat", "38.9", "--lon", "-77.4"]
    assert _apply(cp, name, cred, *fields, "--gpu-type", "L4", "--gpu-count", "4") == 0
    assert f"region {name}: created" in capsys.readouterr().out
    region = cp.ok("GET", f"/v1/regions/{name}")
    assert (region["provider"], region["lat"], region["lon"]) == ("aws", 38.9, -77.4)
    assert (region["gpu_type"], region["gpu_count"], region["status"]) == ("L4", 4, "active")
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    credential = cred.read_text().strip()
    assert credential and _agent_can_read(cp, credential) == 200

    # the same apply again changes nothing, not even the credential
    assert _apply(cp, name, cred, *fields, "--gpu-type", "L4", "--gpu-count", "4") == 0
    assert f"region {name}: unchanged" in capsys.readouterr().out
    assert cp.ok("GET", f"/v1/regions/{name}")["row_version"] == region["row_version"]
    assert cred.read_text().strip() == credential

    # changed fields are patched in place; the credential keeps working
    assert _apply(cp, name, cred, *fields, "--gpu-type", "H100", "--gpu-count", "8") == 0
    assert "updated (gpu_type, gpu_count)" in capsys.readouterr().out
    updated = cp.ok("GET", f"/v1/regions/{name}")
    assert (updated["gpu_type"], updated["gpu_count"]) == ("H100", 8)
    assert updated["row_version"] > region["row_version"]
    assert cred.read_text().strip() == credential
    assert _agent_can_read(cp, credential) == 200


def test_missing_credential_file_issues_a_new_one(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp, name = control_plane, unique("euw1")
    cred = tmp_path / "cred"
    assert _apply(cp, name, cred, "--lat", "53.3", "--lon", "-6.3") == 0
    old = cred.read_text().strip()
    cred.unlink()
    assert _apply(cp, name, cred, "--lat", "53.3", "--lon", "-6.3") == 0
    new = cred.read_text().strip()
    assert new != old
    assert _agent_can_read(cp, new) == 200
    assert _agent_can_read(cp, old) == 401
    # a credential rotated elsewhere (the file's one no longer works) is replaced too
    cp.ok("POST", f"/v1/regions/{name}/credential")
    assert _agent_can_read(cp, new) == 401
    assert _apply(cp, name, cred, "--lat", "53.3", "--lon", "-6.3") == 0
    new = cred.read_text().strip()
    assert _agent_can_read(cp, new) == 200
    # an explicit rotation also replaces it
    assert _apply(cp, name, cred, "--lat", "53.3", "--lon", "-6.3", "--rotate-credential") == 0
    assert cred.read_text().strip() not in (new, old)
    assert _agent_can_read(cp, new) == 401


def test_status_is_left_alone_unless_given(control_plane: ControlPlane, tmp_path: Path) -> None:
    cp, name = control_plane, unique("apne1")
    cred = tmp_path / "cred"
    assert _apply(cp, name, cred, "--lat", "35.7", "--lon", "139.7") == 0
    etag = f'"{cp.ok("GET", f"/v1/regions/{name}")["row_version"]}"'
    cp.ok(
        "PATCH",
        f"/v1/regions/{name}",
        json={"status": "draining"},
        headers={"Authorization": f"Bearer {cp.token}", "If-Match": etag},
    )
    assert _apply(cp, name, cred, "--lat", "35.7", "--lon", "139.7") == 0
    assert cp.ok("GET", f"/v1/regions/{name}")["status"] == "draining"
    assert _apply(cp, name, cred, "--lat", "35.7", "--lon", "139.7", "--status", "active") == 0
    assert cp.ok("GET", f"/v1/regions/{name}")["status"] == "active"
    # a disabled region's credential is refused, yet still its own: it is kept
    credential = cred.read_text()
    assert _apply(cp, name, cred, "--lat", "35.7", "--lon", "139.7", "--status", "disabled") == 0
    assert _agent_can_read(cp, credential.strip()) == 401
    assert _apply(cp, name, cred, "--lat", "35.7", "--lon", "139.7") == 0
    assert cred.read_text() == credential
    assert _apply(cp, name, cred, "--lat", "35.7", "--lon", "139.7", "--status", "active") == 0
    assert _agent_can_read(cp, credential.strip()) == 200, "works again once re-enabled"


def test_delete_is_idempotent_and_removes_the_credential(
    control_plane: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cp, name = control_plane, unique("usw2")
    cred = tmp_path / "cred"
    assert _apply(cp, name, cred, "--lat", "45.8", "--lon", "-119.7") == 0
    assert name in cp.region_names()
    assert _delete(cp, name, "--credential-file", str(cred)) == 0
    assert f"region {name}: deregistered" in capsys.readouterr().out
    assert name not in cp.region_names()
    assert not cred.exists()
    assert _delete(cp, name, "--credential-file", str(cred)) == 0
    assert "was not registered" in capsys.readouterr().out


def test_delete_refuses_a_region_with_deployments(
    control_plane: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cp, name, model = control_plane, unique("euc1"), unique("mlp")
    cred = tmp_path / "cred"
    assert _apply(cp, name, cred, "--lat", "50.1", "--lon", "8.7") == 0
    cp.model_version(model)
    deployment = cp.ok(
        "POST", "/v1/deployments", 201, json={"model": model, "version": "1", "region": name}
    )
    capsys.readouterr()

    assert _delete(cp, name, "--check-only") == 1
    err = capsys.readouterr().err
    assert "cannot be deregistered" in err and f"{model}:1" in err
    assert _delete(cp, name, "--credential-file", str(cred)) == 1
    err = capsys.readouterr().err
    assert "cannot be deregistered" in err and f"{model}:1" in err
    assert name in cp.region_names()
    assert cred.exists(), "a refused delete keeps the credential"

    etag = f'"{deployment["row_version"]}"'
    cp.ok(
        "DELETE",
        f"/v1/deployments/{deployment['id']}",
        204,
        headers={"Authorization": f"Bearer {cp.token}", "If-Match": etag},
    )
    assert _delete(cp, name, "--check-only") == 0
    assert f"region {name}: can be deregistered" in capsys.readouterr().out
    assert name in cp.region_names(), "a check changes nothing"
    assert _delete(cp, name, "--credential-file", str(cred)) == 0
    assert name not in cp.region_names()
    assert _delete(cp, name, "--check-only") == 0
    assert "is not registered" in capsys.readouterr().out


def test_bad_input_is_named(
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cp, cred = control_plane, tmp_path / "cred"
    assert _apply(cp, unique("r"), cred, "--lat", "91", "--lon", "0") == 1
    assert "lat" in capsys.readouterr().err
    assert _apply(cp, "Bad/Name", cred, "--lat", "1", "--lon", "0") == 2
    assert "invalid region name" in capsys.readouterr().err
    assert not cred.exists()

    args = ["regions", "apply", "--control-plane", cp.url, "--name", unique("r")]
    args += ["--lat", "1", "--lon", "2"]
    monkeypatch.delenv("MERIDIAN_ADMIN_TOKEN", raising=False)
    assert main(args) == 2
    assert "admin token is needed" in capsys.readouterr().err
    monkeypatch.setenv("MERIDIAN_ADMIN_TOKEN", "not-a-real-token-000000000")
    assert main(args) == 1
    assert "check the admin token" in capsys.readouterr().err
    monkeypatch.setenv("MERIDIAN_ADMIN_TOKEN", cp.token)
    assert main(args) == 0, "the token is read from the environment"

    token_file = tmp_path / "admin-token"
    token_file.write_text(cp.token + "\n")
    monkeypatch.setenv("MERIDIAN_ADMIN_TOKEN", "not-a-real-token-000000000")
    assert main([*args, "--token-file", str(token_file)]) == 0, "a token file comes first"
    assert main([*args, "--token-file", str(tmp_path / "missing")]) == 2
    assert "cannot read the admin token file" in capsys.readouterr().err

    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["regions", "delete", "--control-plane", dead, "--name", "x"]) == 1
    assert "cannot reach the control plane" in capsys.readouterr().err


class _Interleaved(RegionRegistrar):
    """Lets another writer change the region between our GET and our write, once."""

    def __init__(self, client: httpx.Client, cp: ControlPlane) -> None:
        super().__init__(client)
        self.cp = cp
        self.interfered = 0

    def get(self, name: str) -> tuple[dict[str, Any], str] | None:
        seen = super().get(name)
        if seen is not None and not self.interfered:
            self.interfered += 1
            self.cp.ok(
                "PATCH",
                f"/v1/regions/{name}",
                json={"gpu_count": 99},
                headers={"Authorization": f"Bearer {self.cp.token}", "If-Match": "*"},
            )
        return seen


def test_a_write_that_loses_a_race_reads_again(control_plane: ControlPlane, tmp_path: Path) -> None:
    cp, name = control_plane, unique("race")
    cred = tmp_path / "cred"
    spec = RegionSpec(name=name, lat=1.0, lon=2.0, gpu_type="L4", gpu_count=4)
    with cp.client() as http:
        assert RegionRegistrar(http).apply(spec, cred).action == "created"
        moved = RegionSpec(name=name, lat=3.0, lon=2.0, gpu_type="L4", gpu_count=4)
        racing = _Interleaved(http, cp)
        applied = racing.apply(moved, cred)
        assert racing.interfered == 1
        # the other writer's gpu_count was seen on the second read and put right
        assert applied.action == "updated" and set(applied.changed) == {"lat", "gpu_count"}
        region = cp.ok("GET", f"/v1/regions/{name}")
        assert (region["lat"], region["gpu_count"]) == (3.0, 4)

        assert _Interleaved(http, cp).delete(name) is True
    assert name not in cp.region_names()
