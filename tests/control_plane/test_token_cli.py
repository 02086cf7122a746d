"""``meridian token``: writes a token straight into the database and prints it once."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.app import open_registry
from control_plane.settings import ControlPlaneSettings
from meridian.cli import main
from meridian.errors import Unauthenticated


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

        row = next(line for line in listing.splitlines() if "\tops\t" in line)
        token_id = row.split("\t")[0]
        assert row.split("\t")[4] == "-"  # no expiry

        # rotate: a new token with the same name and scopes, the old one revoked
        assert main(["token", "--database-url", url, "rotate", token_id, "--expires-in", "2h"]) == 0
        rotated = capsys.readouterr().out
        new_token = rotated.strip().splitlines()[-1]
        assert "expires" in rotated and new_token != token
        assert registry.authenticate(new_token).scopes == {"admin", "read"}
        with pytest.raises(Unauthenticated):
            registry.authenticate(token)
        assert main(["token", "--database-url", url, "rotate", token_id]) == 1  # revoked
        capsys.readouterr()

        assert main(["token", "--database-url", url, "list"]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if "\tops\t" in line)
        new_id, expires = row.split("\t")[0], row.split("\t")[4]
        assert expires != "-"
        assert main(["token", "--database-url", url, "revoke", new_id]) == 0
        assert registry.has_active_admin_token() is False
        assert main(["token", "--database-url", url, "revoke", "999"]) == 1
        assert (
            main(["token", "--database-url", url, "create", "--name", "x", "--scopes", "root"]) == 2
        )
        with pytest.raises(SystemExit):  # argparse: not a lifetime
            main(["token", "--database-url", url, "create", "--name", "x", "--scopes", "read",
                  "--expires-in", "soon"])  # fmt: skip
    finally:
        registry.close()
