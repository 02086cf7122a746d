"""``meridian token``: writes a token straight into the database and prints it once."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.app import open_registry
from control_plane.settings import ControlPlaneSettings
from meridian.cli import main


def test_token_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    assert (
        main(["token", "--database-url", url, "create", "--name", "ops", "--scopes", "admin,read"])
        == 0
    )
    token = capsys.readouterr().out.strip().splitlines()[-1]
    settings = ControlPlaneSettings(database_url=url, data_dir=tmp_path)
    registry = open_registry(settings)
    try:
        principal = registry.authenticate(token)
        assert principal.name == "ops" and principal.scopes == {"admin", "read"}

        assert main(["token", "--database-url", url, "list"]) == 0
        listing = capsys.readouterr().out
        assert "ops" in listing and token not in listing

        token_id = listing.split("\t")[0]
        assert main(["token", "--database-url", url, "revoke", token_id]) == 0
        assert registry.has_active_admin_token() is False
        assert main(["token", "--database-url", url, "revoke", "999"]) == 1
        assert (
            main(["token", "--database-url", url, "create", "--name", "x", "--scopes", "root"]) == 2
        )
    finally:
        registry.close()
