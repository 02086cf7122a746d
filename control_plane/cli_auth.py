"""Where the admin API's command-line clients find their token and the control plane."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CliUsageError", "add_connection_arguments", "control_plane_url", "resolve_token"]

URL_ENV = "MERIDIAN_CONTROL_PLANE"


class CliUsageError(Exception):
    """The command line lacks something it needs (exit status 2); the message says what."""


def add_connection_arguments(
    parser: argparse.ArgumentParser, token_envs: Sequence[str], what: str
) -> None:
    """``--control-plane``, ``--token``, ``--token-file`` and ``--timeout``."""
    parser.add_argument(
        "--control-plane", metavar="URL", help=f"admin API base URL (default: ${URL_ENV})"
    )
    envs = ", then ".join(f"${e}" for e in token_envs)
    parser.add_argument("--token", help=f"{what} token (default: --token-file, then {envs})")
    parser.add_argument("--token-file", type=Path, help="a file holding the token")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request")


def control_plane_url(args: argparse.Namespace) -> str:
    url = args.control_plane or os.environ.get(URL_ENV, "")
    if not url:
        raise CliUsageError(f"the control plane's URL is needed: --control-plane or ${URL_ENV}")
    return str(url).rstrip("/")


def resolve_token(args: argparse.Namespace, token_envs: Sequence[str], what: str) -> str:
    """``--token``, else the file ``--token-file`` names, else the first set of ``token_envs``."""
    token = args.token
    if not token and args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise CliUsageError(f"cannot read the token file: {exc}") from exc
    for env in token_envs:
        token = token or os.environ.get(env, "")
    if not token:
        envs = ", $".join(token_envs)
        raise CliUsageError(f"{what} token is needed: --token, --token-file, ${envs}")
    return str(token)
