"""An instance identity document is evidence only if AWS's certificate of its own region
signed exactly its bytes: real AWS-signed vectors against the shipped certificates, and
every way a document or its envelope can be wrong, with test region certificates."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from chit.attestors.base import InvalidEvidence
from chit.attestors.aws_iid.certificates import SHIPPED_CERTIFICATES
from chit.attestors.aws_iid.envelope import encode_subject_token
from chit.attestors.aws_iid.pkcs7 import verify_signed_data
from tests.conftest import AwsRegions
from tests.factories import (
    DROP,
    ChitServer,
    RegionCertificate,
    assert_issued,
    assert_refused,
    instance_document,
    iid_token,
    new_nonce,
)
from tests.attestors.aws_iid.conftest import DB, VECTOR_NONCE, exchange, signed, vector, verifier, verify


# --- real AWS-signed documents, AWS's shipped certificates ------------------------------------


@pytest.mark.parametrize("n", [0, 1])
def test_real_documents_verify_with_the_shipped_certificate(n: int) -> None:
    document, signature = vector(n)
    attestation = verify(verifier(), iid_token(document, new_nonce(), signature=signature))
    claims = json.loads(document)
    assert attestation.kind == "aws_iid"
    assert attestation.subject == f"spiffe://example.org/aws/975050371289/us-east-1/{claims['instanceId']}"
    assert attestation.facts["availability_zone"] == claims["availabilityZone"]
    assert attestation.facts["image_id"] == claims["imageId"]
    assert attestation.att_claim() == {
        "kind": "aws_iid",
        "account_id": "975050371289",
        "region": "us-east-1",
        "instance_id": claims["instanceId"],
    }
    assert dict(attestation.claims) == claims


def test_the_collectors_encoding_is_what_the_verifier_reads() -> None:
    document, signature = vector(1)
    attestation = verify(verifier(), encode_subject_token(document, new_nonce(), signature=signature))
    assert attestation.facts["instance_id"] == "i-0ce4441c840a0a941"


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("position", [0, 20, 100, 250, -2, -1])
def test_one_changed_byte_fails(n: int, position: int) -> None:
    document, signature = vector(n)
    changed = bytearray(document.encode())
    changed[position] ^= 0x01
    with pytest.raises(InvalidEvidence):
        verify(verifier(), iid_token(changed.decode(), new_nonce(), signature=signature))


@pytest.mark.parametrize("n", [0, 1])
def test_reserialized_json_fails(n: int) -> None:
    document, signature = vector(n)
    for reserialized in (json.dumps(json.loads(document)), json.dumps(json.loads(document), indent=2), document + "\n"):
        assert json.loads(reserialized) == json.loads(document)
        with pytest.raises(InvalidEvidence, match="signature does not verify"):
            verify(verifier(), iid_token(reserialized, new_nonce(), signature=signature))


def test_swapped_signatures_fail() -> None:
    (document0, signature0), (document1, signature1) = vector(0), vector(1)
    for document, signature in ((document0, signature1), (document1, signature0)):
        with pytest.raises(InvalidEvidence, match="signature does not verify"):
            verify(verifier(), iid_token(document, new_nonce(), signature=signature))


def test_only_the_documents_own_region_certificate_is_tried(tmp_path: Path) -> None:
    """AWS's us-east-1 certificate installed as us-west-2's: a us-east-1 document is not checked with it."""
    (tmp_path / "signature").mkdir()
    shutil.copy(SHIPPED_CERTIFICATES / "signature" / "us-east-1.pem", tmp_path / "signature" / "us-west-2.pem")
    document, signature = vector(0)
    with pytest.raises(InvalidEvidence, match="no signature certificate for region us-east-1"):
        verify(verifier(certificates_dir=tmp_path), iid_token(document, new_nonce(), signature=signature))


def test_shipped_certificates_cover_the_regions_aws_publishes() -> None:
    regions = verifier().certificates.regions
    assert {"us-east-1", "eu-west-1", "ap-southeast-2", "us-gov-west-1", "cn-north-1"} <= regions
    assert len(regions) == len(list((SHIPPED_CERTIFICATES / "signature").glob("*.pem")))


def test_real_document_is_exchanged_through_chit(chit: ChitServer) -> None:
    document, signature = vector(0)
    body = assert_issued(exchange(chit, iid_token(document, VECTOR_NONCE, signature=signature)))
    _, claims = chit.verify_issued(body["access_token"], DB)
    assert claims["sub"] == "spiffe://example.org/aws/975050371289/us-east-1/i-0b02d936754a6d637"
    assert claims["att"] == {"kind": "aws_iid", "account_id": "975050371289", "region": "us-east-1", "instance_id": "i-0b02d936754a6d637"}
    audit = chit.audit_lines()[-1]
    assert audit["outcome"] == "issued" and audit["kind"] == "aws_iid" and audit["region"] == "us-east-1"


def test_tampered_real_document_is_refused_through_chit(chit: ChitServer) -> None:
    document, signature = vector(1)
    tampered = document.replace('"t2.micro"', '"t2.large"')
    body = assert_refused(exchange(chit, iid_token(tampered, VECTOR_NONCE, signature=signature)))
    assert chit.audit_for(body["decision_id"])["outcome"] == "invalid"


# --- test region certificates: every way a document can be wrong -----------------------------


def malformed_tokens(regions: AwsRegions) -> dict[str, str]:
    """Subject tokens that are wrong in one way each (signed correctly where a signature applies)."""
    good = instance_document()

    def sign(document: str) -> str:
        return signed(regions, document)

    def raw(body: str) -> str:
        return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    signature = regions.us_east_1.signature(good)
    return {
        "not base64url": "eyJ+ZG9j/dW1lbnQi",
        "wrong padding": signed(regions, good) + "===",
        "not json": raw("document=x&signature=y"),
        "json array": raw(json.dumps([good, signature])),
        "duplicate member in the token": raw(
            f'{{"document": {json.dumps(good)}, "signature": {json.dumps(signature)}, "nonce": "{new_nonce()}", "nonce": "{new_nonce()}"}}'
        ),
        "duplicate member in the document": sign(good[:-2] + ',\n  "region" : "eu-west-1"\n}'),
        "huge integer in the document": sign(good[:-2] + ',\n  "x" : 1' + "0" * 40 + "\n}"),
        "infinite number in the document": sign(good[:-2] + ',\n  "x" : 1e999\n}'),
        "deeply nested document": sign("[" * 3000 + "]" * 3000),
        "document not json": sign("accountId=123456789012"),
        "document not an object": sign('["us-east-1"]'),
        "document missing instanceId": sign(instance_document(instanceId=DROP)),
        "instanceId with a path": sign(instance_document("i-0123456789abcdef0/../../x")),
        "accountId not 12 digits": sign(instance_document(account_id="12345")),
        "region not a region": sign(instance_document(region="us-east-1/../x", availability_zone="us-east-1/../xb")),
        "availabilityZone outside the region": sign(instance_document(availability_zone="us-east-2a")),
        "availabilityZone a longer region": sign(instance_document(availability_zone="us-east-10a")),
        "pendingTime malformed": sign(instance_document(pending_time="yesterday")),
        "pendingTime impossible": sign(instance_document(pending_time="2026-02-30T00:00:00Z")),
        "document with a lone surrogate": raw(json.dumps({"document": good[:-2] + "\ud800}", "signature": signature, "nonce": new_nonce()})),
        "document not a string": raw(json.dumps({"document": json.loads(good), "signature": signature, "nonce": new_nonce()})),
        "document too large": sign(good[:-2] + ',\n  "x" : "' + "a" * 9000 + '"\n}'),
        "missing nonce": iid_token(good, None, signature=signature),
        "nonce too short": iid_token(good, "short-nonce", signature=signature),
        "nonce too long": iid_token(good, "n" * 129, signature=signature),
        "nonce with a space": iid_token(good, "a nonce with spaces", signature=signature),
        "nonce not ascii": iid_token(good, "nönce-0123456789abcdef", signature=signature),
        "nonce not a string": raw(json.dumps({"document": good, "signature": signature, "nonce": 1234567890123456789})),
        "unknown member": raw(json.dumps({"document": good, "signature": signature, "nonce": new_nonce(), "x": 1})),
        "both signature forms": iid_token(good, new_nonce(), signature=signature, rsa2048=regions.us_east_1_rsa2048.rsa2048(good)),
        "no signature": iid_token(good, new_nonce()),
        "empty signature": iid_token(good, new_nonce(), signature=""),
        "signature not base64": iid_token(good, new_nonce(), signature="%%%" + signature),
        "dsa pkcs7 form": iid_token(good, new_nonce(), pkcs7=regions.us_east_1_rsa2048.rsa2048(good)),
        "token too long": signed(regions, good[:-2] + ',\n  "x" : "' + "a" * 7000 + '"\n}') + "A" * 8000,
    }


MALFORMED = {
    'not base64url': 'subject token is not base64url',
    'wrong padding': 'subject token is not base64url',
    'not json': 'subject token is not valid JSON',
    'json array': 'subject token is not a JSON object',
    'duplicate member in the token': "subject token: duplicate JSON member 'nonce'",
    'duplicate member in the document': "document: duplicate JSON member 'region'",
    'huge integer in the document': 'document: JSON integer out of range',
    'infinite number in the document': 'document: JSON number out of range',
    'deeply nested document': 'document is not valid JSON',
    'document not json': 'document is not valid JSON',
    'document not an object': 'document is not a JSON object',
    'document missing instanceId': 'document instanceId missing or malformed',
    'instanceId with a path': 'document instanceId malformed',
    'accountId not 12 digits': 'document accountId malformed',
    'region not a region': 'document region malformed',
    'availabilityZone outside the region': 'document availabilityZone is not in its region',
    'availabilityZone a longer region': 'document availabilityZone is not in its region',
    'pendingTime malformed': 'document pendingTime malformed',
    'pendingTime impossible': 'document pendingTime malformed',
    'document with a lone surrogate': 'document is not valid UTF-8',
    'document not a string': 'document missing',
    'document too large': 'document too large',
    'missing nonce': 'nonce missing: every exchange of an instance identity document needs its nonce',
    'nonce too short': 'nonce must be 16-128 printable ASCII characters without spaces',
    'nonce too long': 'nonce must be 16-128 printable ASCII characters without spaces',
    'nonce with a space': 'nonce must be 16-128 printable ASCII characters without spaces',
    'nonce not ascii': 'nonce must be 16-128 printable ASCII characters without spaces',
    'nonce not a string': 'nonce must be 16-128 printable ASCII characters without spaces',
    'unknown member': 'subject token has unknown members: x',
    'both signature forms': 'subject token needs exactly one of signature, rsa2048',
    'no signature': 'subject token needs exactly one of signature, rsa2048',
    'empty signature': 'signature missing',
    'signature not base64': 'signature is not base64',
    'dsa pkcs7 form': 'the DSA/SHA-1 pkcs7 signature is not accepted; send signature or rsa2048',
    'token too long': 'subject token longer than 16384 characters',
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_subject_token_is_refused(aws_chit: ChitServer, aws_regions: AwsRegions, case: str) -> None:
    body = assert_refused(exchange(aws_chit, malformed_tokens(aws_regions)[case]))
    assert body["error_description"] == f"subject_token invalid: {MALFORMED[case]}"
    assert aws_chit.audit_for(body["decision_id"])["outcome"] == "invalid"


def wrongly_signed(regions: AwsRegions) -> dict[str, str]:
    document = instance_document()
    rsa2048 = regions.us_east_1_rsa2048
    attacker = RegionCertificate()
    blob = base64.b64decode(rsa2048.rsa2048(document, ber=False))
    return {
        "another region's key": iid_token(document, new_nonce(), signature=regions.eu_west_1.signature(document)),
        "a key trusted only for another region": iid_token(
            instance_document(region="eu-west-1"), new_nonce(), signature=regions.us_east_1.signature(instance_document(region="eu-west-1"))
        ),
        "region without a certificate": iid_token(
            instance_document(region="us-west-2"), new_nonce(), signature=regions.us_east_1.signature(instance_document(region="us-west-2"))
        ),
        "region outside the allowlist": iid_token(
            instance_document(region="ap-south-1"), new_nonce(), signature=regions.not_allowed.signature(instance_document(region="ap-south-1"))
        ),
        "account outside the allowlist": signed(regions, instance_document(account_id="999999999999")),
        "expired certificate": iid_token(
            instance_document(region="eu-west-2"), new_nonce(), signature=regions.expired.signature(instance_document(region="eu-west-2"))
        ),
        "certificate not yet valid": iid_token(
            instance_document(region="eu-west-3"), new_nonce(), signature=regions.not_yet_valid.signature(instance_document(region="eu-west-3"))
        ),
        "signature over other bytes": iid_token(document, new_nonce(), signature=regions.us_east_1.signature(document + " ")),
        "rsa2048 blob as signature": iid_token(document, new_nonce(), signature=rsa2048.rsa2048(document)),
        "rsa2048 by an embedded attacker certificate": iid_token(document, new_nonce(), rsa2048=attacker.rsa2048(document)),
        "rsa2048 by the signature-form key": iid_token(document, new_nonce(), rsa2048=regions.us_east_1.rsa2048(document)),
        "rsa2048 over another document": iid_token(document, new_nonce(), rsa2048=rsa2048.rsa2048(instance_document("i-0123456789abcdef0"))),
        "rsa2048 detached": iid_token(document, new_nonce(), rsa2048=rsa2048.rsa2048(document, detached=True)),
        "rsa2048 with SHA-1": iid_token(document, new_nonce(), rsa2048=rsa2048.rsa2048(document, digest="sha1")),
        "rsa2048 with SHA-512": iid_token(document, new_nonce(), rsa2048=rsa2048.rsa2048(document, digest="sha512")),
        "rsa2048 without signed attributes": iid_token(document, new_nonce(), rsa2048=rsa2048.rsa2048(document, attributes=False)),
        "rsa2048 truncated": iid_token(document, new_nonce(), rsa2048=base64.b64encode(blob[:-40]).decode()),
        "rsa2048 with trailing bytes": iid_token(document, new_nonce(), rsa2048=base64.b64encode(blob + b"\0\0").decode()),
        "rsa2048 garbage": iid_token(document, new_nonce(), rsa2048=base64.b64encode(b"\x30\x80" * 50).decode()),
        "rsa2048 of the wrong length": iid_token(document, new_nonce(), rsa2048=base64.b64encode(b"\x30\x84\xff\xff\xff\xff" + blob).decode()),
        "rsa2048 for a region with no rsa2048 certificate": iid_token(
            instance_document(region="eu-west-1"), new_nonce(), rsa2048=rsa2048.rsa2048(instance_document(region="eu-west-1"))
        ),
    }


WRONGLY_SIGNED = {
    "another region's key": 'signature does not verify',
    'a key trusted only for another region': 'signature does not verify',
    'region without a certificate': 'no signature certificate for region us-west-2',
    'region outside the allowlist': 'region ap-south-1 is not allowed',
    'account outside the allowlist': 'account 999999999999 is not allowed',
    'expired certificate': 'the signature certificate of region eu-west-2 is not valid now',
    'certificate not yet valid': 'the signature certificate of region eu-west-3 is not valid now',
    'signature over other bytes': 'signature does not verify',
    'rsa2048 blob as signature': 'signature does not verify',
    'rsa2048 by an embedded attacker certificate': 'rsa2048 signature does not verify',
    'rsa2048 by the signature-form key': 'rsa2048 signature does not verify',
    'rsa2048 over another document': 'rsa2048 signs another document',
    'rsa2048 detached': 'rsa2048 carries no content (detached signatures are not accepted)',
    'rsa2048 with SHA-1': 'rsa2048 digest algorithm is not SHA-256',
    'rsa2048 with SHA-512': 'rsa2048 digest algorithm is not SHA-256',
    'rsa2048 without signed attributes': 'rsa2048 has no signed attributes',
    'rsa2048 truncated': 'rsa2048 is not a valid PKCS#7 SignedData',
    'rsa2048 with trailing bytes': 'rsa2048 is not a valid PKCS#7 SignedData',
    'rsa2048 garbage': 'rsa2048 is not a valid PKCS#7 SignedData',
    'rsa2048 of the wrong length': 'rsa2048 is not a valid PKCS#7 SignedData',
    'rsa2048 for a region with no rsa2048 certificate': 'no rsa2048 certificate for region eu-west-1',
}


@pytest.mark.parametrize("case", WRONGLY_SIGNED)
def test_document_not_signed_by_its_regions_certificate_is_refused(aws_chit: ChitServer, aws_regions: AwsRegions, case: str) -> None:
    body = assert_refused(exchange(aws_chit, wrongly_signed(aws_regions)[case]))
    assert body["error_description"] == f"subject_token invalid: {WRONGLY_SIGNED[case]}"
    assert aws_chit.audit_for(body["decision_id"])["outcome"] == "invalid"


def test_allowlists_name_the_refusal(aws_chit: ChitServer, aws_regions: AwsRegions) -> None:
    tokens = wrongly_signed(aws_regions)
    region = assert_refused(exchange(aws_chit, tokens["region outside the allowlist"]))
    account = assert_refused(exchange(aws_chit, tokens["account outside the allowlist"]))
    assert region["error_description"] == "subject_token invalid: region ap-south-1 is not allowed"
    assert account["error_description"] == "subject_token invalid: account 999999999999 is not allowed"
    assert aws_chit.audit_for(region["decision_id"])["outcome"] == "invalid"


def test_rsa2048_as_aws_serves_it_in_ber(aws_regions: AwsRegions) -> None:
    document = instance_document()
    blob = aws_regions.us_east_1_rsa2048.rsa2048(document)
    assert blob.startswith("MIAGCSqGSIb3DQEHAqCAMIACAQEx")  # indefinite lengths, as AWS's blobs begin
    key = aws_regions.us_east_1_rsa2048.certificate.public_key()
    verify_signed_data(base64.b64decode(blob), document.encode(), key)
    verify_signed_data(base64.b64decode(aws_regions.us_east_1_rsa2048.rsa2048(document, ber=False)), document.encode(), key)
    with pytest.raises(InvalidEvidence, match="signs another document"):
        verify_signed_data(base64.b64decode(blob), document.encode() + b" ", key)


def test_no_truncation_or_changed_byte_of_an_rsa2048_blob_escapes_as_another_error(aws_regions: AwsRegions) -> None:
    """asn1crypto reads lazily: whatever it cannot decode must surface as InvalidEvidence
    (a 400), never as another exception (a 500)."""
    document = instance_document()
    blob = base64.b64decode(aws_regions.us_east_1_rsa2048.rsa2048(document))
    key = aws_regions.us_east_1_rsa2048.certificate.public_key()
    for cut in range(len(blob)):
        with pytest.raises(InvalidEvidence):
            verify_signed_data(blob[:cut], document.encode(), key)
        changed = blob[:cut] + bytes([blob[cut] ^ 0xFF]) + blob[cut + 1 :]
        try:
            verify_signed_data(changed, document.encode(), key)
        except InvalidEvidence:
            pass  # the embedded certificate is ignored, so a change there may verify
