"""Certificates on disk, for servers whose TLS stack reads files (uvicorn)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

from meridian.pki.ca import CertificateAuthority, IssuedCertificate
from meridian.pki.identity import Role

__all__ = ["ServerFiles", "write_issued"]


class ServerFiles:
    """Paths of a certificate, its key and the fleet CA, as written by :func:`write_issued`."""

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self.cert, self.key, self.ca = cert, key, ca


def write_issued(
    ca: CertificateAuthority,
    role: Role,
    directory: Path,
    *,
    name: str,
    region: str | None = None,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    lifetime: dt.timedelta = dt.timedelta(days=7),
) -> ServerFiles:
    """Issue a key and certificate and write NAME.pem, NAME-key.pem (0600) and ca.pem."""
    issued: IssuedCertificate = ca.issue(role, region=region, hosts=hosts, lifetime=lifetime)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, ca_path = (
        directory / f"{name}.pem",
        directory / f"{name}-key.pem",
        directory / "ca.pem",
    )
    cert.write_bytes(issued.cert_pem)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(issued.key_pem)
    if not ca_path.exists() or ca_path.read_bytes() != issued.ca_pem:
        ca_path.write_bytes(issued.ca_pem)
    return ServerFiles(cert, key, ca_path)
