"""``meridian token``: create, list, rotate or revoke API tokens directly in the database."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from control_plane.schemas import TokenCreated

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def lifetime(value: str) -> int:
    """``90``, ``90s``, ``15m``, ``12h`` or ``30d`` as seconds."""
    found = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", value.lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"{value!r} is no lifetime such as 3600, 15m, 12h or 30d")
    return int(found.group(1)) * _UNITS[found.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: from MERIDIAN_ settings)")
    parser.add_argument("--data-dir", help="data dir of the embedded SQLite file (./var)")
    sub = parser.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="create a token and print it once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scopes", required=True, help="comma- or space-separated subset of admin,read,agent"
    )
    expiry = "lifetime, e.g. 3600, 15m, 12h or 30d (default: never expires)"
    create.add_argument("--expires-in", type=lifetime, help=expiry)
    sub.add_parser("list", help="list active tokens (never the secrets)")
    rotate = sub.add_parser(
        "rotate", help="replace a token by id: print a new one (same name and scopes) once"
    )
    rotate.add_argument("id", type=int)
    rotate.add_argument("--expires-in", type=lifetime, help=expiry)
    revoke = sub.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)


def _when(value: object) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M}"


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from control_plane.app import open_registry
    from control_plane.cli import settings_from_args
    from control_plane.db import migrate
    from control_plane.schemas import TokenCreate, TokenRotate
    from meridian.errors import MeridianError

    settings = settings_from_args(args)
    migrate.upgrade(settings.resolved_database_url)
    registry = open_registry(settings)
    try:
        if args.token_command == "create":
            try:
                data = TokenCreate(
                    name=args.name,
                    scopes=args.scopes.replace(",", " ").split(),
                    expires_in_s=args.expires_in,
                )
            except ValidationError as exc:
                print(f"invalid token: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")
                return 2
            created = registry.create_token(data, actor="cli")
            _print_created(created)
        elif args.token_command == "list":
            print("id\tname\tscopes\tcreated\texpires\tlast used")
            for t in registry.list_tokens(limit=500, offset=0).items:
                print(
                    f"{t.id}\t{t.name}\t{' '.join(t.scopes)}\t{_when(t.created_at)}"
                    f"\t{_when(t.expires_at)}\t{_when(t.last_used_at)}"
                )
        elif args.token_command == "rotate":
            try:
                data_rotate = TokenRotate(expires_in_s=args.expires_in)
                rotated = registry.rotate_token(args.id, data_rotate, actor="cli")
            except ValidationError as exc:
                print(f"invalid lifetime: {exc.errors()[0]['msg']}")
                return 2
            except MeridianError as exc:
                print(exc.message)
                return 1
            print(f"token {args.id} revoked; its replacement:")
            _print_created(rotated)
        else:
            try:
                registry.revoke_token(args.id, actor="cli")
            except MeridianError as exc:
                print(exc.message)
                return 1
            print(f"token {args.id} revoked")
    finally:
        registry.close()
    return 0


def _print_created(created: TokenCreated) -> None:
    expiry = f", expires {_when(created.expires_at)} UTC" if created.expires_at else ""
    print(f"token {created.id} ({created.name}, scopes {' '.join(created.scopes)}{expiry}):")
    print(created.token)
