"""The RSA-2048 signature of an instance identity document: CMS SignedData (RFC 5652).

cryptography has no public PKCS#7 verification call, so the SignedData is parsed
with asn1crypto and its two links are checked with cryptography:

1. RFC 5652 §5.4: "the message digest is computed on the content", and
   §11.2: the message-digest attribute "MUST" be signed — so the SHA-256 of the
   document must equal the signed message-digest attribute;
2. RFC 5652 §5.4: "the DER encoding of the SignedAttrs value is input to the
   signature", verified with the region's configured certificate.

Certificates embedded in the blob are ignored: only the configured certificate
of the document's region is ever used. The signed content must be the document,
byte for byte. AWS serves the blob in BER (indefinite lengths, constructed
octet strings), which asn1crypto reads; anything it cannot read is refused.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from chit.attestors.base import InvalidEvidence

MAX_BLOB_BYTES = 8 * 1024
# rsaEncryption (as OpenSSL writes it) or sha256WithRSAEncryption; never PSS, DSA or ECDSA.
_SIGNATURE_ALGORITHMS = frozenset({"rsassa_pkcs1v15", "sha256_rsa"})
# Everything asn1crypto raises on input it cannot decode (it parses lazily, so
# these surface while the structure is walked).
_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError, AttributeError)


def verify_signed_data(blob: bytes, content: bytes, key: rsa.RSAPublicKey) -> None:
    """Raise InvalidEvidence unless `blob` is a SHA-256 SignedData over exactly `content`, signed by `key`."""
    from asn1crypto import cms

    if len(blob) > MAX_BLOB_BYTES:
        raise InvalidEvidence("rsa2048 signature too large")
    try:
        info = cms.ContentInfo.load(blob, strict=True)
        if info["content_type"].native != "signed_data":
            raise InvalidEvidence("rsa2048 is not a PKCS#7 SignedData")
        signed_data = info["content"]
        encapsulated = signed_data["encap_content_info"]
        if encapsulated["content_type"].native != "data":
            raise InvalidEvidence("rsa2048 does not sign plain data")
        signed_content = encapsulated["content"].native if encapsulated["content"] else None
        if not isinstance(signed_content, bytes):
            raise InvalidEvidence("rsa2048 carries no content (detached signatures are not accepted)")
        if not hmac.compare_digest(signed_content, content):
            raise InvalidEvidence("rsa2048 signs another document")
        signers = signed_data["signer_infos"]
        if len(signers) != 1:
            raise InvalidEvidence("rsa2048 must have exactly one signer")
        signer = signers[0]
        if signer["digest_algorithm"]["algorithm"].native != "sha256":
            raise InvalidEvidence("rsa2048 digest algorithm is not SHA-256")
        if signer["signature_algorithm"]["algorithm"].native not in _SIGNATURE_ALGORITHMS:
            raise InvalidEvidence("rsa2048 signature algorithm is not RSA PKCS#1 v1.5")
        attributes = signer["signed_attrs"]
        if not attributes:
            raise InvalidEvidence("rsa2048 has no signed attributes")
        values: dict[str, list[object]] = {}
        for attribute in attributes:
            name = attribute["type"].native
            if name in values:
                raise InvalidEvidence(f"rsa2048 repeats the signed attribute {name}")
            values[name] = attribute["values"].native
        # The SET OF attributes is signed under its universal tag, not the [0] of SignerInfo.
        signed_attributes = b"\x31" + attributes.dump()[1:]
        signature = signer["signature"].native
    except InvalidEvidence:
        raise
    except _ASN1_ERRORS:
        raise InvalidEvidence("rsa2048 is not a valid PKCS#7 SignedData") from None

    if values.get("content_type") != ["data"]:
        raise InvalidEvidence("rsa2048 content-type attribute is not data")
    digest = values.get("message_digest")
    if not (isinstance(digest, list) and len(digest) == 1 and isinstance(digest[0], bytes)):
        raise InvalidEvidence("rsa2048 message-digest attribute missing")
    if not hmac.compare_digest(digest[0], hashlib.sha256(content).digest()):
        raise InvalidEvidence("rsa2048 message digest does not match the document")
    try:
        key.verify(signature, signed_attributes, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise InvalidEvidence("rsa2048 signature does not verify") from None
