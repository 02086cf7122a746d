"""Settings: environment prefix, defaults, and refusing placeholder secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from control_plane.settings import ControlPlaneSettings


def test_environment_prefix_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MERIDIAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MERIDIAN_HTTP_PORT", "9123")
    monkeypatch.delenv("MERIDIAN_DATABASE_URL", raising=False)
    monkeypatch.delenv("MERIDIAN_ARTIFACT_DIR", raising=False)
    settings = ControlPlaneSettings()
    assert settings.http_port == 9123
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'meridian.sqlite'}"
    assert settings.resolved_artifact_dir == tmp_path.resolve() / "artifacts"


def test_placeholder_tokens_are_refused_outside_local() -> None:
    for value in ("changeme", "short", "PASSWORD"):
        with pytest.raises(ValidationError, match="placeholder"):
            ControlPlaneSettings(
                environment="production", bootstrap_admin_token=value, insecure=True
            )
    with pytest.warns(UserWarning, match="placeholder"):
        ControlPlaneSettings(environment="local", bootstrap_admin_token="changeme")
    strong = ControlPlaneSettings(
        environment="production", bootstrap_admin_token="x" * 32, tls_dir="/etc/meridian/ca"
    )
    assert strong.bootstrap_admin_token is not None


def test_plaintext_outside_local_use_needs_insecure() -> None:
    with pytest.raises(ValidationError, match="MERIDIAN_TLS_DIR"):
        ControlPlaneSettings(environment="staging")
    assert ControlPlaneSettings(environment="staging", insecure=True).tls_dir is None
    assert ControlPlaneSettings().tls_dir is None  # local use: plaintext, with a warning


def test_bad_values_name_the_setting() -> None:
    with pytest.raises(ValidationError, match="max_artifact_bytes"):
        ControlPlaneSettings(max_artifact_bytes=0)
    with pytest.raises(ValidationError, match="environment"):
        ControlPlaneSettings(environment="prod")  # type: ignore[arg-type]
