"""``meridian rollout``: create a progressive rollout, follow it, pause, resume, promote or
abort it, through the admin API.

- ``create MODEL FROM TO [--steps 0.01,0.1,0.5,1] [--bake-s S] [--wave r1,r2 ...]
  [--gates JSON]``: prints the rollout (its id, waves and gates).
- ``status [ID] [--model M]``: one rollout with its current gate figures per region, or the
  list (newest first).
- ``pause|resume|promote|abort ID``: reads the rollout's ETag and sends the action with it.

The token comes from ``--token``, ``--token-file`` or ``MERIDIAN_ADMIN_TOKEN`` (a read
token is enough for ``status``). Exit status: 0 done, 1 refused or unreachable, 2 bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from control_plane.cli_auth import (
    CliUsageError,
    add_connection_arguments,
    control_plane_url,
    resolve_token,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["RolloutError", "add_arguments", "main", "render"]

TOKEN_ENVS = ("MERIDIAN_ADMIN_TOKEN", "MERIDIAN_READ_TOKEN")
ACTIONS = ("pause", "resume", "promote", "abort")


class RolloutError(Exception):
    """The control plane refused or could not be reached (exit status 1)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser, TOKEN_ENVS, "an admin (or, for status, read)")
    parser.add_argument("--json", action="store_true", help="print the rollout(s) as JSON")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="start moving MODEL from one version to another")
    create.add_argument("model")
    create.add_argument("from_version")
    create.add_argument("to_version")
    create.add_argument("--variant", help="the new version's variant")
    create.add_argument("--steps", help="canary shares per wave, e.g. 0.01,0.1,0.5,1")
    create.add_argument("--bake-s", type=float, help="seconds each step bakes")
    waves = "the regions of one wave (repeat, in order); default: planned"
    create.add_argument("--wave", action="append", metavar="R1,R2", help=waves)
    create.add_argument("--gates", help='gate settings as JSON, e.g. {"min_requests": 500}')
    status = sub.add_parser("status", help="one rollout, or the list")
    status.add_argument("id", nargs="?", type=int)
    status.add_argument("--model")
    for action in ACTIONS:
        p = sub.add_parser(action, help=f"{action} a rollout")
        p.add_argument("id", type=int)


def _ok(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise RolloutError(f"{response.request.method} {response.request.url.path}: "
                           f"{response.status_code} {detail}")  # fmt: skip
    return response.json() if response.content else None


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": args.model,
        "from_version": args.from_version,
        "to_version": args.to_version,
    }
    if args.variant:
        body["variant"] = args.variant
    if args.steps:
        try:
            body["steps"] = [float(s) for s in args.steps.split(",")]
        except ValueError as exc:
            raise CliUsageError(f"--steps must be numbers separated by commas: {exc}") from exc
    if args.bake_s is not None:
        body["bake_s"] = args.bake_s
    if args.wave:
        body["waves"] = [[r.strip() for r in w.split(",") if r.strip()] for w in args.wave]
    if args.gates:
        try:
            body["gates"] = json.loads(args.gates)
        except ValueError as exc:
            raise CliUsageError(f"--gates must be JSON: {exc}") from exc
    return body


def render(rollout: dict[str, Any]) -> str:
    """A rollout as a few lines of text: where it is, why, and each region's gates."""
    waves = " → ".join("[" + ", ".join(w) + "]" for w in rollout["waves"])
    lines = [
        f"rollout {rollout['id']}: {rollout['model']} {rollout['from_version']} → "
        f"{rollout['to_version']}  {rollout['state']}",
        f"  waves {waves}; steps {', '.join(f'{s:.0%}' for s in rollout['steps'])}; "
        f"bake {rollout['bake_s']:g} s",
        f"  at wave {rollout['wave'] + 1}, step "
        f"{rollout['step'] + 1 if rollout['step'] >= 0 else '(workers starting)'}: "
        f"new version at {rollout['share']:.0%}",
        f"  {rollout['reason']}",
    ]
    for region, f in sorted(rollout.get("figures", {}).items()):
        lines.append(
            f"  {region}: {f.get('verdict')} ({'; '.join(f.get('reasons', []))}) "
            f"new {f.get('new_requests')} req, {f.get('new_error_rate')} err, "
            f"p99 {f.get('new_p99_ms')} ms | old {f.get('old_requests')} req, "
            f"{f.get('old_error_rate')} err, p99 {f.get('old_p99_ms')} ms"
            + (f" | drift {f.get('drift')} on {f.get('mirrored')}" if "drift" in f else "")
        )
    return "\n".join(lines)


def run(args: argparse.Namespace, http: httpx.Client) -> list[dict[str, Any]]:
    if args.action == "create":
        return [_ok(http.post("/v1/rollouts", json=create_body(args)))]
    if args.action == "status":
        if args.id is not None:
            return [_ok(http.get(f"/v1/rollouts/{args.id}"))]
        params = {"model": args.model} if args.model else {}
        return list(_ok(http.get("/v1/rollouts", params=params))["items"])
    current = http.get(f"/v1/rollouts/{args.id}")
    _ok(current)
    etag = current.headers.get("etag", "*")
    done = http.post(f"/v1/rollouts/{args.id}/{args.action}", headers={"if-match": etag})
    return [_ok(done)]


def main(args: argparse.Namespace) -> int:
    import httpx

    try:
        url = control_plane_url(args)
        token = resolve_token(args, TOKEN_ENVS, "an admin (or read)")
        if args.action == "create":
            create_body(args)  # bad --steps or --gates: exit status 2 before any request
    except CliUsageError as exc:
        print(f"meridian rollout: {exc}", file=sys.stderr)
        return 2
    headers = {"authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=args.timeout) as http:
            rollouts = run(args, http)
    except (RolloutError, httpx.HTTPError) as exc:
        print(f"meridian rollout: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rollouts if len(rollouts) != 1 else rollouts[0], indent=2))
    else:
        print("\n\n".join(render(r) for r in rollouts) or "no rollouts")
    return 0
