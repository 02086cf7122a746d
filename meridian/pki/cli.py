"""``meridian ca``: make the fleet CA (or import an operator's), issue certificates.

``meridian ca init --dir DIR`` writes DIR/ca.pem and DIR/ca-key.pem (mode 0600);
with ``--import-cert F --import-key F`` it checks and stores an operator's CA instead.
``meridian ca issue --dir DIR --role worker --region eu-west --out PREFIX`` writes
PREFIX.pem and PREFIX-key.pem, for processes started by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="create the fleet CA, or import an operator's")
    init.add_argument("--dir", required=True, type=Path, help="where the CA is kept")
    init.add_argument("--name", default="Meridian fleet CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=3650, help="the CA's lifetime")
    init.add_argument("--import-cert", type=Path, help="an operator's CA certificate (PEM)")
    init.add_argument("--import-key", type=Path, help="its EC private key (PEM)")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    issue = sub.add_parser("issue", help="issue a certificate and key from the fleet CA")
    issue.add_argument("--dir", required=True, type=Path)
    issue.add_argument("--role", required=True, choices=["agent", "control-plane", "router",
                                                         "worker", "admin"])  # fmt: skip
    issue.add_argument("--region", default=None)
    issue.add_argument("--host", action="append", default=[], help="DNS name or IP (repeat)")
    issue.add_argument("--hours", type=float, default=24.0, help="lifetime (short by design)")
    issue.add_argument("--out", required=True, type=Path, help="writes OUT.pem and OUT-key.pem")


def main(args: argparse.Namespace) -> int:
    from meridian.errors import InvalidInput
    from meridian.pki import CertificateAuthority, Role
    from meridian.pki.ca import CA_CERT_FILE

    try:
        if args.ca_command == "init":
            if (args.dir / CA_CERT_FILE).exists() and not args.force:
                print(f"a CA already exists in {args.dir} (use --force to replace it)",
                      file=sys.stderr)  # fmt: skip
                return 1
            if bool(args.import_cert) != bool(args.import_key):
                print("--import-cert and --import-key go together", file=sys.stderr)
                return 2
            if args.import_cert:
                ca = CertificateAuthority.from_pem(
                    args.import_cert.read_bytes(), args.import_key.read_bytes()
                )
            else:
                ca = CertificateAuthority.create(args.name, lifetime=dt.timedelta(days=args.days))
            ca.save(args.dir)
            print(f"fleet CA {ca.cert.subject.rfc4514_string()} in {args.dir}")
            return 0
        ca = CertificateAuthority.load(args.dir)
        issued = ca.issue(
            Role(args.role),
            region=args.region,
            hosts=args.host,
            lifetime=dt.timedelta(hours=args.hours),
        )
        args.out.with_name(args.out.name + ".pem").write_bytes(issued.cert_pem)
        key = args.out.with_name(args.out.name + "-key.pem")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(issued.key_pem)
        print(f"{args.role} certificate valid until {issued.not_after.isoformat()}")
        return 0
    except (InvalidInput, OSError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
