"""The document's signature, in either form, checked with its region's key."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from chit.attestors.aws_iid.envelope import IidEvidence
from chit.attestors.aws_iid.pkcs7 import verify_signed_data
from chit.attestors.base import InvalidEvidence


def verify_document_signature(evidence: IidEvidence, key: rsa.RSAPublicKey) -> None:
    if evidence.form == "rsa2048":
        verify_signed_data(evidence.signature, evidence.document, key)
        return
    try:
        key.verify(evidence.signature, evidence.document, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise InvalidEvidence("signature does not verify") from None
