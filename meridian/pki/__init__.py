"""The fleet's public-key infrastructure: one CA, short-lived EC P-256 certificates.

Every certificate names what it is for in URI SANs (``meridian://region/<name>``,
``meridian://role/<role>``); servers also carry DNS/IP SANs. All cryptography is
the ``cryptography`` library's.
"""

from meridian.pki.ca import CertificateAuthority, IssuedCertificate, new_key_and_csr
from meridian.pki.identity import (
    PeerIdentity,
    Role,
    credential_tag,
    identity_of,
    identity_of_pem,
)

__all__ = [
    "CertificateAuthority",
    "IssuedCertificate",
    "PeerIdentity",
    "Role",
    "credential_tag",
    "identity_of",
    "identity_of_pem",
    "new_key_and_csr",
]
