"""``meridian regions``: register or deregister a region through the admin API, idempotently.

Provisioning tools (``deploy/terraform/``) call this on create and destroy:

- ``apply`` creates the region, or brings an existing one to the given fields with
  ``PATCH`` + ``If-Match``; it writes the agent credential (shown by the control plane
  only once) to ``--credential-file`` with mode 0600. A region that already exists keeps
  its credential while that file holds one the control plane accepts; when the file is
  missing, or its credential was rotated away, a new credential is issued (the old one
  stops working), so a re-run always leaves a usable file behind.
- ``delete`` deregisters the region (``GET`` for the ETag, then ``DELETE`` with
  ``If-Match``); a region that is already gone is fine. A region that still has
  deployments is refused (409) with the list of them. ``delete --check-only`` changes
  nothing and fails the same way, so that a tool can refuse before it tears down the
  region's machines.

The admin token comes from ``--token``, ``--token-file`` (a file holding it) or
``MERIDIAN_ADMIN_TOKEN``, in that order; the last two keep it out of process listings.
Exit status: 0 done, 1 the control plane refused or could not be reached, 2 bad
arguments.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Applied",
    "RegionRegistrar",
    "RegionSpec",
    "RegistrationError",
    "add_arguments",
    "main",
    "write_secret_file",
]

TOKEN_ENV = "MERIDIAN_ADMIN_TOKEN"
# fields `apply` manages; the others (name, timestamps, row_version) are not settable
MANAGED_FIELDS = ("provider", "lat", "lon", "gpu_type", "gpu_count", "status")
# how often a write that lost a race with another writer (412) is retried
STALE_RETRIES = 3
DEPLOYMENTS_HINT = (
    "(DELETE /v1/deployments/{id} for each, or move them to another region, then run this again)"
)
# the registry's rule for region names (they travel in URL paths)
REGION_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class RegistrationError(Exception):
    """The control plane refused, or could not be reached; ``message`` says why."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class RegionSpec:
    """What a region should look like. ``None`` fields are left as they are."""

    name: str
    lat: float
    lon: float
    provider: str | None = None
    gpu_type: str | None = None
    gpu_count: int | None = None
    status: str | None = None

    def fields(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in MANAGED_FIELDS if getattr(self, f) is not None}


@dataclass(frozen=True)
class Applied:
    """What ``apply`` did: ``created``, ``updated`` (with the changed fields) or ``unchanged``."""

    action: str
    region: dict[str, Any]
    changed: tuple[str, ...] = ()
    credential_written: bool = False


def write_secret_file(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` atomically with mode 0600 (never briefly readable)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secret + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, Mapping) and "detail" in body:
        return str(body["detail"])
    return str(body)[:500]


class RegionRegistrar:
    """Idempotent region registration over the REST admin API (one ``httpx.Client``).

    The client carries the base URL and the admin token; ``apply`` and ``delete`` may be
    repeated any number of times with the same outcome.
    """

    def __init__(self, client: httpx.Client) -> None:
        self._http = client

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise RegistrationError(
                f"cannot reach the control plane at {self._http.base_url}: {exc}"
            ) from exc

    def _fail(self, response: httpx.Response, doing: str) -> RegistrationError:
        status = response.status_code
        hint = {
            401: " (check the admin token)",
            403: " (the token needs the admin scope)",
        }.get(status, "")
        return RegistrationError(f"{doing}: {status} {_detail(response)}{hint}", status=status)

    def get(self, name: str) -> tuple[dict[str, Any], str] | None:
        """The region and its ETag, or ``None`` when it is not registered."""
        response = self._request("GET", f"/v1/regions/{name}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, f"reading region {name!r}")
        return response.json(), response.headers.get("ETag", "*")

    def apply(
        self, spec: RegionSpec, credential_file: Path | None, *, rotate: bool = False
    ) -> Applied:
        """Create the region or bring it to ``spec``; keep a usable credential in the file."""
        for _ in range(STALE_RETRIES):
            current = self.get(spec.name)
            if current is None:
                created = self._create(spec)
                if created is not None:
                    credential = created.pop("agent_credential")
                    if credential_file is not None:
                        write_secret_file(credential_file, credential)
                    return Applied(
                        "created", created, credential_written=credential_file is not None
                    )
                continue  # someone registered it meanwhile: update that one
            region, etag = current
            changed = tuple(f for f, v in spec.fields().items() if not _same(region.get(f), v))
            if changed:
                patched = self._patch(spec.name, {f: getattr(spec, f) for f in changed}, etag)
                if patched is None:
                    continue  # lost a race (412): read again
                region = patched
            wrote = False
            usable = self._usable(credential_file, disabled=region.get("status") == "disabled")
            if credential_file is not None and (rotate or not usable):
                rotated = self._rotate(spec.name)
                credential = rotated.pop("agent_credential")
                write_secret_file(credential_file, credential)
                region, wrote = rotated, True
            return Applied("updated" if changed else "unchanged", region, changed, wrote)
        raise RegistrationError(
            f"region {spec.name!r} kept changing under us ({STALE_RETRIES} attempts); try again"
        )

    def _usable(self, credential_file: Path | None, *, disabled: bool) -> bool:
        """The file holds a credential the control plane still accepts (not rotated away).

        A disabled region's credential is refused like an unknown one, so there the file
        is trusted as it is: rotating would only strand the agent when it is re-enabled.
        """
        if credential_file is None:
            return True
        try:
            credential = credential_file.read_text().strip()
        except FileNotFoundError:
            return False
        if not credential or disabled:
            return bool(credential)
        headers = {"Authorization": f"Bearer {credential}"}
        response = self._request("GET", "/v1/models", params={"limit": 1}, headers=headers)
        return response.status_code != 401

    def _create(self, spec: RegionSpec) -> dict[str, Any] | None:
        response = self._request("POST", "/v1/regions", json={"name": spec.name, **spec.fields()})
        if response.status_code == 409:
            return None
        if response.status_code != 201:
            raise self._fail(response, f"registering region {spec.name!r}")
        body: dict[str, Any] = response.json()
        return body

    def _patch(self, name: str, body: dict[str, Any], etag: str) -> dict[str, Any] | None:
        response = self._request(
            "PATCH", f"/v1/regions/{name}", json=body, headers={"If-Match": etag}
        )
        if response.status_code == 412:
            return None
        if response.status_code != 200:
            raise self._fail(response, f"updating region {name!r}")
        result: dict[str, Any] = response.json()
        return result

    def _rotate(self, name: str) -> dict[str, Any]:
        response = self._request("POST", f"/v1/regions/{name}/credential")
        if response.status_code != 200:
            raise self._fail(response, f"issuing a credential for region {name!r}")
        body: dict[str, Any] = response.json()
        return body

    def check_deletable(self, name: str) -> bool:
        """Raise what ``delete`` would raise for deployments; ``False`` when not registered."""
        if self.get(name) is None:
            return False
        response = self._request("GET", "/v1/deployments", params={"region": name, "limit": 500})
        if response.status_code != 200:
            raise self._fail(response, f"listing the deployments of region {name!r}")
        page = response.json()
        if page["total"]:
            placed = sorted(f"{d['model']}:{d['version']}" for d in page["items"])
            more = f" and {page['total'] - len(placed)} more" if page["total"] > len(placed) else ""
            raise RegistrationError(
                f"region {name!r} cannot be deregistered: it still has deployments "
                f"({', '.join(placed)}{more}) {DEPLOYMENTS_HINT}",
                status=409,
            )
        return True

    def delete(self, name: str) -> bool:
        """Deregister the region; ``False`` when it was not registered."""
        for _ in range(STALE_RETRIES):
            current = self.get(name)
            if current is None:
                return False
            response = self._request(
                "DELETE", f"/v1/regions/{name}", headers={"If-Match": current[1]}
            )
            if response.status_code == 204:
                return True
            if response.status_code == 404:
                return False
            if response.status_code == 409:
                raise RegistrationError(
                    f"region {name!r} cannot be deregistered: {_detail(response)} "
                    f"{DEPLOYMENTS_HINT}",
                    status=409,
                )
            if response.status_code != 412:
                raise self._fail(response, f"deregistering region {name!r}")
        raise RegistrationError(
            f"region {name!r} kept changing under us ({STALE_RETRIES} attempts); try again"
        )


def _same(current: Any, wanted: Any) -> bool:
    if isinstance(wanted, float) and isinstance(current, int | float):
        return abs(float(current) - wanted) < 1e-9
    return bool(current == wanted)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="regions_command", required=True, metavar="ACTION")
    apply = sub.add_parser(
        "apply", help="create the region or update it to these fields (idempotent)"
    )
    delete = sub.add_parser("delete", help="deregister the region (idempotent)")
    for p in (apply, delete):
        p.add_argument("--control-plane", required=True, metavar="URL", help="admin API base URL")
        p.add_argument("--token", help=f"admin token (default: --token-file, then ${TOKEN_ENV})")
        p.add_argument("--token-file", type=Path, help="a file holding the admin token")
        p.add_argument("--name", required=True, help="region name, e.g. aws-us-east-1")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request")
        p.add_argument(
            "--credential-file",
            type=Path,
            help="apply: where the agent credential is written (0600); "
            "delete: removed after deregistering",
        )
    delete.add_argument(
        "--check-only",
        action="store_true",
        help="change nothing; fail as delete would while the region has deployments",
    )
    apply.add_argument("--provider", help="cloud provider, e.g. aws, gcp, local")
    apply.add_argument("--lat", type=float, required=True, help="latitude in degrees")
    apply.add_argument("--lon", type=float, required=True, help="longitude in degrees")
    apply.add_argument("--gpu-type", help="e.g. L4, A10G, T4")
    apply.add_argument("--gpu-count", type=int, help="GPUs in the region")
    apply.add_argument(
        "--status",
        choices=("active", "draining", "disabled"),
        help="enforce this status (default: leave an operator's choice alone)",
    )
    apply.add_argument(
        "--rotate-credential",
        action="store_true",
        help="issue a new credential even when the credential file exists",
    )


def main(args: argparse.Namespace) -> int:
    import httpx

    if not REGION_NAME.match(args.name):
        print(
            f"invalid region name {args.name!r}: lowercase letters, digits and '-', "
            "starting with a letter or digit, at most 64 characters",
            file=sys.stderr,
        )
        return 2
    token = args.token
    if not token and args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            print(f"cannot read the admin token file: {exc}", file=sys.stderr)
            return 2
    token = token or os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"an admin token is needed: --token, --token-file or ${TOKEN_ENV}", file=sys.stderr)
        return 2
    client = httpx.Client(
        base_url=args.control_plane.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=args.timeout,
    )
    with client:
        registrar = RegionRegistrar(client)
        try:
            if args.regions_command == "apply":
                return _apply(registrar, args)
            return _delete(registrar, args)
        except RegistrationError as exc:
            print(f"meridian regions {args.regions_command}: {exc.message}", file=sys.stderr)
            return 1


def _apply(registrar: RegionRegistrar, args: argparse.Namespace) -> int:
    spec = RegionSpec(
        name=args.name,
        lat=args.lat,
        lon=args.lon,
        provider=args.provider,
        gpu_type=args.gpu_type,
        gpu_count=args.gpu_count,
        status=args.status,
    )
    applied = registrar.apply(spec, args.credential_file, rotate=args.rotate_credential)
    what = applied.action
    if applied.changed:
        what += f" ({', '.join(applied.changed)})"
    print(f"region {spec.name}: {what}")
    if applied.credential_written:
        print(f"agent credential written to {args.credential_file}")
    return 0


def _delete(registrar: RegionRegistrar, args: argparse.Namespace) -> int:
    if args.check_only:
        registered = registrar.check_deletable(args.name)
        state = "can be deregistered" if registered else "is not registered"
        print(f"region {args.name}: {state}")
        return 0
    removed = registrar.delete(args.name)
    print(f"region {args.name}: {'deregistered' if removed else 'was not registered'}")
    if args.credential_file is not None:
        args.credential_file.unlink(missing_ok=True)
    return 0
