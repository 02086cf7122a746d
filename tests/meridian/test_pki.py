"""The fleet CA: create, keep, import, issue; names come from the CA, not the CSR."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from meridian.cli import main as meridian_main
from meridian.errors import InvalidInput
from meridian.pki import (
    CertificateAuthority,
    Role,
    credential_tag,
    identity_of_pem,
    new_key_and_csr,
)


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, uri: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_issued_server_certificate_names_region_role_and_hosts() -> None:
    ca = CertificateAuthority.create()
    issued = ca.issue(
        Role.WORKER, region="eu-west", hosts=["127.0.0.1", "localhost"],
        lifetime=dt.timedelta(minutes=30),
    )  # fmt: skip
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "meridian://role/worker",
        "meridian://region/eu-west",
    ]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    key = serialization.load_pem_private_key(issued.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    peer = identity_of_pem(issued.cert_pem)
    assert (peer.role, peer.region) == ("worker", "eu-west")
    assert 30 * 60 <= peer.lifetime_s() <= 36 * 60  # short-lived (5 min backdated for skew)
    assert ca.verify(issued.cert_pem).serial_number == peer.serial


def test_csr_contributes_only_its_key_the_ca_decides_the_names() -> None:
    ca = CertificateAuthority.create()
    key = ec.generate_private_key(ec.SECP256R1())
    wanted = _csr(key, "meridian://region/us-east")  # asks for another region's name
    issued = ca.sign_csr(wanted, Role.AGENT, region="eu-west", credential="cred-eu")
    assert issued.key_pem == b""
    peer = identity_of_pem(issued.cert_pem)
    assert peer.region == "eu-west" and peer.role == "agent"
    assert peer.credential_tag == credential_tag("cred-eu") != credential_tag("cred-eu2")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.public_key() == key.public_key()


def test_bad_csrs_and_certificates_of_another_ca_are_refused() -> None:
    ca = CertificateAuthority.create()
    with pytest.raises(InvalidInput, match="not a PEM certificate request"):
        ca.sign_csr(b"garbage", Role.AGENT, region="r")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidInput, match="EC P-256"):
        ca.sign_csr(_csr(rsa_key, "meridian://x"), Role.AGENT, region="r")
    other = CertificateAuthority.create("another CA").issue(Role.AGENT, region="r")
    with pytest.raises(InvalidInput, match="not issued by this fleet's CA"):
        ca.verify(other.cert_pem)
    mine = ca.issue(Role.AGENT, region="r", lifetime=dt.timedelta(minutes=1))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
    with pytest.raises(InvalidInput, match="expired"):
        ca.verify(mine.cert_pem, at=later)


def test_ca_is_kept_on_disk_with_a_private_key_file(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    ca.save(tmp_path)
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    again = CertificateAuthority.load(tmp_path)
    assert again.cert_pem == ca.cert_pem
    again.verify(ca.issue(Role.ROUTER).cert_pem)  # the same key signs
    with pytest.raises(InvalidInput, match="meridian ca init"):
        CertificateAuthority.load(tmp_path / "missing")


def test_importing_a_ca_checks_it_is_a_ca_and_the_key_matches() -> None:
    ca = CertificateAuthority.create()
    leaf = ca.issue(Role.WORKER)
    with pytest.raises(InvalidInput, match="not a CA"):
        CertificateAuthority.from_pem(leaf.cert_pem, leaf.key_pem)
    other_key, _ = new_key_and_csr("x")
    with pytest.raises(InvalidInput, match="does not match"):
        CertificateAuthority.from_pem(ca.cert_pem, other_key)
    with pytest.raises(InvalidInput, match="cannot be read"):
        CertificateAuthority.from_pem(ca.cert_pem, b"not a key")


def test_cli_init_issue_and_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert meridian_main(["ca", "init", "--dir", str(tmp_path / "ca")]) == 0
    assert meridian_main(["ca", "init", "--dir", str(tmp_path / "ca")]) == 1  # no overwrite
    assert "already exists" in capsys.readouterr().err
    out = tmp_path / "w"
    assert meridian_main(["ca", "issue", "--dir", str(tmp_path / "ca"), "--role", "worker",
                          "--region", "eu-west", "--host", "127.0.0.1", "--hours", "2",
                          "--out", str(out)]) == 0  # fmt: skip
    ca = CertificateAuthority.load(tmp_path / "ca")
    ca.verify((tmp_path / "w.pem").read_bytes())
    assert identity_of_pem((tmp_path / "w.pem").read_bytes()).region == "eu-west"
    # an operator's CA, imported into another directory, signs the same
    args = ["ca", "init", "--dir", str(tmp_path / "imported"),
            "--import-cert", str(tmp_path / "ca" / "ca.pem"),
            "--import-key", str(tmp_path / "ca" / "ca-key.pem")]  # fmt: skip
    assert meridian_main(args) == 0
    assert CertificateAuthority.load(tmp_path / "imported").cert_pem == ca.cert_pem
    bad = ["ca", "init", "--dir", str(tmp_path / "bad"), "--import-cert", str(out) + ".pem",
           "--import-key", str(out) + "-key.pem"]  # fmt: skip
    assert meridian_main(bad) == 1
    assert "not a CA" in capsys.readouterr().err
