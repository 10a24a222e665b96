"""AWS's regional certificates: `signature/REGION.pem` and `rsa2048/REGION.pem` under one
directory (`certificates_dir`, else the ones shipped in `certificates/`). The set of
known regions is the set of files; only the document's own region is ever tried.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from chit.attestors.aws_iid.config import AWS_REGION
from chit.attestors.aws_iid.envelope import Form
from chit.attestors.base import InvalidEvidence

log = logging.getLogger("chit.attestors.aws_iid")
SHIPPED_CERTIFICATES = Path(__file__).resolve().parent / "certificates"


@dataclass(frozen=True, slots=True)
class RegionCertificate:
    region: str
    certificate: x509.Certificate
    key: rsa.RSAPublicKey

    def valid_at(self, now: float) -> bool:
        return self.certificate.not_valid_before_utc.timestamp() <= now <= self.certificate.not_valid_after_utc.timestamp()


def load_certificates(directory: Path, min_bits: int) -> dict[str, RegionCertificate]:
    """REGION.pem files: the set of known regions is the set of files."""
    certificates: dict[str, RegionCertificate] = {}
    if not directory.is_dir():
        return certificates
    for path in sorted(directory.glob("*.pem")):
        region = path.stem
        if not AWS_REGION.fullmatch(region):
            raise ValueError(f"{path}: the file name must be an AWS region name (REGION.pem)")
        try:
            certificate = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError:
            raise ValueError(f"{path}: not a PEM certificate") from None
        key = certificate.public_key()
        # AWS still signs some regions' documents with RSA-1024 keys (docs/operators/aws.md "AWS nonce"):
        # they are trusted as AWS publishes them, but nothing weaker.
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < min_bits:
            raise ValueError(f"{path}: an RSA key of at least {min_bits} bits is required")
        certificates[region] = RegionCertificate(region, certificate, key)
    return certificates


class RegionCertificates:
    """`signature/REGION.pem` and `rsa2048/REGION.pem` under one directory."""

    def __init__(self, directory: Path, now: float | None = None):
        self.directory = directory
        self.by_form: dict[str, dict[str, RegionCertificate]] = {
            "signature": load_certificates(directory / "signature", 1024),
            "rsa2048": load_certificates(directory / "rsa2048", 2048),
        }
        if not any(self.by_form.values()):
            raise ValueError(f"{directory}: no certificates (expected signature/REGION.pem or rsa2048/REGION.pem)")
        now = time.time() if now is None else now
        for form, certificates in self.by_form.items():
            for certificate in certificates.values():
                if not certificate.valid_at(now):
                    log.warning("the %s certificate of %s in %s is not valid now", form, certificate.region, directory)

    @property
    def regions(self) -> frozenset[str]:
        return frozenset(region for certificates in self.by_form.values() for region in certificates)

    def key(self, form: Form, region: str, now: float) -> rsa.RSAPublicKey:
        """The one certificate that may verify a document of `region` in `form`."""
        certificate = self.by_form[form].get(region)
        if certificate is None:
            raise InvalidEvidence(f"no {form} certificate for region {region}")
        if not certificate.valid_at(now):
            raise InvalidEvidence(f"the {form} certificate of region {region} is not valid now")
        return certificate.key
