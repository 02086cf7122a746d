"""``meridian token``: create, list or revoke API tokens directly in the database."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: from MERIDIAN_ settings)")
    parser.add_argument("--data-dir", help="data dir of the embedded SQLite file (./var)")
    sub = parser.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="create a token and print it once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scopes", required=True, help="comma- or space-separated subset of admin,read,agent"
    )
    sub.add_parser("list", help="list active tokens (never the secrets)")
    revoke = sub.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from control_plane.app import open_registry
    from control_plane.cli import settings_from_args
    from control_plane.db import migrate
    from control_plane.schemas import TokenCreate
    from meridian.errors import MeridianError

    settings = settings_from_args(args)
    migrate.upgrade(settings.resolved_database_url)
    registry = open_registry(settings)
    try:
        if args.token_command == "create":
            try:
                data = TokenCreate(name=args.name, scopes=args.scopes.replace(",", " ").split())
            except ValidationError as exc:
                print(f"invalid token: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")
                return 2
            created = registry.create_token(data, actor="cli")
            print(f"token {created.id} ({created.name}, scopes {' '.join(created.scopes)}):")
            print(created.token)
        elif args.token_command == "list":
            for t in registry.list_tokens(limit=500, offset=0).items:
                print(f"{t.id}\t{t.name}\t{' '.join(t.scopes)}\t{t.created_at:%Y-%m-%d %H:%M}")
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
