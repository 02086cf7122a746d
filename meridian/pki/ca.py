"""A fleet certificate authority: create or import one, issue short-lived certificates.

The CA decides every name in a certificate it issues: a CSR contributes only its
public key (checked to be self-signed), so an agent cannot ask for another
region's name. Keys are EC P-256, signatures ECDSA-SHA256.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meridian.errors import InvalidInput
from meridian.pki.identity import Role, identity_uris

__all__ = ["CA_CERT_FILE", "CA_KEY_FILE", "CertificateAuthority", "IssuedCertificate"]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between hosts
_SERVER_ROLES = {Role.CONTROL_PLANE, Role.WORKER, Role.ADMIN, Role.ROUTER}
_CLIENT_ROLES = {Role.AGENT, Role.ROUTER, Role.CONTROL_PLANE}
_CA_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True,
    crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_key_and_csr(common_name: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key and a CSR for it; returns (key PEM, CSR PEM). The key never
    leaves the process that made it."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    cert_pem: bytes
    key_pem: bytes  # empty when issued for a CSR (the requester holds the key)
    ca_pem: bytes
    not_after: dt.datetime


def _subject_names(hosts: Sequence[str], uris: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


class CertificateAuthority:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        basic = _basic_constraints(cert)
        if basic is None or not basic.ca:
            raise InvalidInput("the CA certificate is not a CA (basicConstraints CA:TRUE)")
        if cert.public_key() != key.public_key():
            raise InvalidInput("the CA key does not match the CA certificate")
        self.cert = cert
        self._key = key

    # --- making and keeping a CA -------------------------------------------------------------

    @classmethod
    def create(
        cls, name: str = "Meridian fleet CA", *, lifetime: dt.timedelta = dt.timedelta(days=3650)
    ) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(
        cls, cert_pem: bytes, key_pem_bytes: bytes, password: bytes | None = None
    ) -> CertificateAuthority:
        """An operator's CA: its certificate and (EC) private key, PEM."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise InvalidInput(f"the CA certificate is not a PEM certificate: {exc}") from None
        try:
            key = serialization.load_pem_private_key(key_pem_bytes, password)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"the CA key cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidInput("the CA key must be an EC key (P-256 recommended)")
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        cert, key = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        if not cert.exists() or not key.exists():
            raise InvalidInput(f"no CA in {directory}: run `meridian ca init --dir {directory}`")
        return cls.from_pem(cert.read_bytes(), key.read_bytes())

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CA_CERT_FILE).write_bytes(self.cert_pem)
        key_path = directory / CA_KEY_FILE
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem(self._key))

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    # --- issuing -----------------------------------------------------------------------------

    def issue(
        self,
        role: Role,
        *,
        region: str | None = None,
        hosts: Sequence[str] = (),
        lifetime: dt.timedelta = dt.timedelta(hours=24),
        credential: str | None = None,
    ) -> IssuedCertificate:
        """A new key and a certificate for it (for processes the CA's holder starts)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(key.public_key(), role, region, hosts, lifetime, credential)
        return IssuedCertificate(cert, key_pem(key), self.cert_pem, _not_after(cert))

    def sign_csr(
        self,
        csr_pem: bytes,
        role: Role,
        *,
        region: str | None = None,
        hosts: Sequence[str] = (),
        lifetime: dt.timedelta = dt.timedelta(hours=24),
        credential: str | None = None,
    ) -> IssuedCertificate:
        """A certificate for the key of ``csr_pem``, with the names given here (the CSR's
        own names are ignored). Raises InvalidInput for a malformed or forged CSR."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise InvalidInput(f"the CSR is not a PEM certificate request: {exc}") from None
        if not csr.is_signature_valid:
            raise InvalidInput("the CSR's signature does not match its key")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise InvalidInput("the CSR's key must be EC P-256")
        cert = self._sign(public, role, region, hosts, lifetime, credential)
        return IssuedCertificate(cert, b"", self.cert_pem, _not_after(cert))

    def _sign(
        self,
        public: ec.EllipticCurvePublicKey,
        role: Role,
        region: str | None,
        hosts: Sequence[str],
        lifetime: dt.timedelta,
        credential: str | None,
    ) -> bytes:
        now = _now()
        cn = f"{role.value}.{region}" if region else role.value
        usages = []
        if role in _SERVER_ROLES:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if role in _CLIENT_ROLES:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        names = _subject_names(hosts, identity_uris(role, region, credential))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(min(now + lifetime, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def verify(self, cert_pem: bytes, *, at: dt.datetime | None = None) -> x509.Certificate:
        """The certificate, if this CA signed it and it is valid at ``at`` (now)."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            raise InvalidInput("the certificate was not issued by this fleet's CA") from None
        when = at or _now()
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            raise InvalidInput("the certificate is expired or not yet valid")
        return cert


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _not_after(cert_pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
