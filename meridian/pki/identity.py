"""What a fleet certificate says about its holder, read from its URI SANs."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from dataclasses import dataclass

from cryptography import x509

__all__ = [
    "SCHEME",
    "PeerIdentity",
    "Role",
    "credential_tag",
    "identity_of",
    "identity_of_pem",
    "identity_uris",
]

SCHEME = "meridian://"


class Role(enum.StrEnum):
    AGENT = "agent"  # a region agent: client of the control plane's agent stream
    CONTROL_PLANE = "control-plane"  # serves agents (and the admin API)
    ROUTER = "router"  # client of workers, server of end users
    WORKER = "worker"  # serves the router
    ADMIN = "admin"  # serves the admin API


def credential_tag(credential: str) -> str:
    """A short, one-way tag of an agent credential, carried in the agent's certificate so
    that rotating the credential refuses every certificate issued under the old one
    (domain-separated from the stored credential hash)."""
    return hashlib.sha256(b"meridian-agent-certificate\0" + credential.encode()).hexdigest()[:32]


def identity_uris(
    role: Role, region: str | None = None, credential: str | None = None
) -> list[str]:
    uris = [f"{SCHEME}role/{role.value}"]
    if region:
        uris.append(f"{SCHEME}region/{region}")
    if credential is not None:
        uris.append(f"{SCHEME}credential/{credential_tag(credential)}")
    return uris


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    role: str | None
    region: str | None
    credential_tag: str | None
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime

    def lifetime_s(self) -> float:
        return (self.not_after - self.not_before).total_seconds()


def identity_of(cert: x509.Certificate) -> PeerIdentity:
    found: dict[str, str] = {}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(SCHEME):
            kind, _, value = uri[len(SCHEME) :].partition("/")
            found.setdefault(kind, value)
    return PeerIdentity(
        role=found.get("role"),
        region=found.get("region"),
        credential_tag=found.get("credential"),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def identity_of_pem(pem: bytes) -> PeerIdentity:
    return identity_of(x509.load_pem_x509_certificate(pem))
