"""The AWS instance identity attestor: a document is evidence only if AWS's
certificate of its own region signed exactly its bytes, its instance is bound
to the client's nonce, and (with verify_instance) EC2 says it is running.

Real AWS-signed vectors are checked against the certificates shipped with
chit; everything else is signed with test region certificates and exchanged
through real chit servers, with moto as the EC2 API."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from chit.attestors.base import CollectionFailed, EvidenceUnavailable, InvalidEvidence, PlatformAbsent
from chit.attestors.aws_iid.bindings import InstanceBindings
from chit.attestors.aws_iid.certificates import SHIPPED_CERTIFICATES
from chit.attestors.aws_iid.collector import AwsIidCollector, instance_nonce
from chit.attestors.aws_iid.envelope import encode_subject_token, parse_subject_token
from chit.attestors.aws_iid.verifier import AwsIidVerifier
from chit.attestors.aws_iid.pkcs7 import verify_signed_data
from chit.aws import AwsClients
from chit.attestors.aws_iid.config import AwsIidSettings
from chit.aws import Aws
from chit.state import MemoryStore, StateStore, StateUnavailable
from tests.conftest import AwsRegions
from tests.factories import (
    AWS_IID_TYPE,
    AWS_TEST_ENV,
    DROP,
    MOTO_ACCOUNT,
    ChitServer,
    ImdsStandIn,
    MotoServer,
    RegionCertificate,
    assert_issued,
    assert_refused,
    closed_port_url,
    instance_document,
    iid_token,
    new_nonce,
)

VECTORS = Path(__file__).parent / "aws_iid_vectors"
VECTOR_NONCE = "vector-nonce-0123456789"  # the session chit binds the vectors' instances to it
DB = "https://db.internal"


def vector(n: int) -> tuple[str, str]:
    return (VECTORS / f"iid{n}.json").read_text(), (VECTORS / f"iid{n}.sig").read_text()


def verifier(state: StateStore | None = None, **config: object) -> AwsIidVerifier:
    return AwsIidVerifier(AwsIidSettings(**config), "example.org", state or MemoryStore())


def verify(v: AwsIidVerifier, token: str):
    return asyncio.run(v.verify(token, time.time()))


def exchange(chit: ChitServer, token: str, **fields: str):
    return chit.exchange(token, subject_token_type=AWS_IID_TYPE, **fields)


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


def signed(regions: AwsRegions, document: str, nonce: str | None = None, **token: bool) -> str:
    return iid_token(document, nonce or new_nonce(), signature=regions.us_east_1.signature(document), **token)


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


# --- exchanges of running instances (moto's EC2) -------------------------------------------------


@pytest.fixture
def instance(moto: MotoServer) -> dict:
    """A running instance the aws_chit policy binds (account, region, tag team=payments)."""
    return moto.launch_instance(tags={"team": "payments"})


def test_signature_form_is_exchanged(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer, instance: dict) -> None:
    document = moto.document_for(instance)
    body = assert_issued(exchange(aws_chit, signed(aws_regions, document)))
    _, claims = aws_chit.verify_issued(body["access_token"], DB)
    assert claims["sub"] == f"spiffe://example.org/aws/{MOTO_ACCOUNT}/us-east-1/{instance['InstanceId']}"
    assert claims["att"] == {"kind": "aws_iid", "account_id": MOTO_ACCOUNT, "region": "us-east-1", "instance_id": instance["InstanceId"]}


def test_rsa2048_form_is_exchanged(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer, instance: dict) -> None:
    document = moto.document_for(instance)
    nonce = new_nonce()
    assert_issued(exchange(aws_chit, iid_token(document, nonce, rsa2048=aws_regions.us_east_1_rsa2048.rsa2048(document))))
    # DER and a padded token are accepted too.
    token = iid_token(document, nonce, padded=True, rsa2048=aws_regions.us_east_1_rsa2048.rsa2048(document, ber=False))
    assert token.endswith("=") or len(token) % 4 == 0
    assert_issued(exchange(aws_chit, token))


def test_audit_never_holds_the_signature_or_the_nonce(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer, instance: dict) -> None:
    document = moto.document_for(instance)
    nonce = new_nonce()
    signature = aws_regions.us_east_1.signature(document)
    assert_issued(exchange(aws_chit, iid_token(document, nonce, signature=signature)))
    assert_refused(exchange(aws_chit, iid_token(document, new_nonce(), signature=signature)))
    audit = (aws_chit.directory / "audit.log").read_text()
    assert instance["InstanceId"] in audit
    for secret in (nonce, signature.replace("\n", "")[:40], signature.splitlines()[1]):
        assert secret not in audit


def test_instance_tags_reach_the_policy(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer) -> None:
    untagged = moto.launch_instance(tags={"team": "billing"})
    body = assert_refused(exchange(aws_chit, signed(aws_regions, moto.document_for(untagged))))
    audit = aws_chit.audit_for(body["decision_id"])
    assert audit["outcome"] == "denied" and audit["reasons"] == ["instance tags do not match the binding"]


def test_stopped_instance_is_refused(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer, instance: dict) -> None:
    document = moto.document_for(instance)
    moto.client("ec2").stop_instances(InstanceIds=[instance["InstanceId"]])
    body = assert_refused(exchange(aws_chit, signed(aws_regions, document)))
    assert body["error_description"] == "subject_token invalid: the instance is stopped, not pending or running"


def test_terminated_or_unknown_instance_is_refused(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer, instance: dict) -> None:
    moto.client("ec2").terminate_instances(InstanceIds=[instance["InstanceId"]])
    assert_refused(exchange(aws_chit, signed(aws_regions, moto.document_for(instance))))
    assert_refused(exchange(aws_chit, signed(aws_regions, instance_document("i-0123456789abcdef0"))))


def test_document_disagreeing_with_ec2_is_refused(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer, instance: dict) -> None:
    document = json.loads(moto.document_for(instance))
    for field, value in (("availabilityZone", "us-east-1c"), ("imageId", "ami-0123456789abcdef0")):
        changed = instance_document(
            instance["InstanceId"],
            availability_zone=value if field == "availabilityZone" else document["availabilityZone"],
            image_id=value if field == "imageId" else document["imageId"],
            pending_time=document["pendingTime"],
        )
        body = assert_refused(exchange(aws_chit, signed(aws_regions, changed)))
        assert "the instance is in another availability zone" in body["error_description"] or "the instance runs another image" in body["error_description"]


def test_instance_facts_come_from_describe_instances(moto: MotoServer, aws_regions: AwsRegions, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    iam = moto.client("iam")
    profile = iam.create_instance_profile(InstanceProfileName=f"agent-{new_nonce()[:8]}")["InstanceProfile"]
    ec2 = moto.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    described = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": "us-east-1b"},
        IamInstanceProfile={"Arn": profile["Arn"]},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "team", "Value": "payments"}]}],
    )["Instances"][0]
    attestor = AwsIidVerifier(
        AwsIidSettings(certificates_dir=aws_regions.directory, verify_instance=True),
        "example.org",
        MemoryStore(),
        AwsClients(Aws(endpoint_url=moto.url)),
    )

    async def scenario() -> dict:
        attestation = await attestor.verify(signed(aws_regions, moto.document_for(described)), time.time())
        return dict((await attestor.enrich(attestation)).facts)

    facts = asyncio.run(scenario())
    assert facts["state"] in ("pending", "running")
    assert facts["tags"] == {"team": "payments"}
    assert facts["vpc_id"] == described["VpcId"] and facts["subnet_id"] == described["SubnetId"]
    assert facts["instance_profile_arn"] == profile["Arn"]
    assert facts["image_id"] == image


# --- the nonce binding -------------------------------------------------------------------------


def test_first_exchange_binds_the_nonce(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer, instance: dict) -> None:
    document = moto.document_for(instance)
    nonce = new_nonce()
    assert_issued(exchange(aws_chit, signed(aws_regions, document, nonce)))
    assert_issued(exchange(aws_chit, signed(aws_regions, document, nonce)))  # re-attestation
    for other in (new_nonce(), nonce[:-1] + "x"):
        body = assert_refused(exchange(aws_chit, signed(aws_regions, document, other)))
        assert body["error_description"] == "subject_token invalid: this instance is bound to another nonce"
    assert_refused(exchange(aws_chit, iid_token(document, None, signature=aws_regions.us_east_1.signature(document))))
    assert_issued(exchange(aws_chit, signed(aws_regions, document, nonce)))


def test_older_pending_time_is_refused(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer, instance: dict) -> None:
    launched = json.loads(moto.document_for(instance))["pendingTime"]
    at = lambda pending: instance_document(instance["InstanceId"], image_id=instance["ImageId"], pending_time=pending)  # noqa: E731
    nonce = new_nonce()
    assert_issued(exchange(aws_chit, signed(aws_regions, at(launched), nonce)))
    body = assert_refused(exchange(aws_chit, signed(aws_regions, at("2020-01-01T00:00:00Z"), nonce)))
    assert "pendingTime is older" in body["error_description"]
    # A restart (a newer pendingTime) re-attests with the same nonce, and moves the binding on.
    assert_issued(exchange(aws_chit, signed(aws_regions, at("2099-01-01T00:00:00Z"), nonce)))
    assert_refused(exchange(aws_chit, signed(aws_regions, at(launched), nonce)))


def test_failed_exchanges_bind_nothing(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer) -> None:
    described = moto.launch_instance(tags={"team": "billing"})
    document = moto.document_for(described)
    # Denied by policy (wrong team), then with a scope nobody grants: neither binds its nonce.
    assert_refused(exchange(aws_chit, signed(aws_regions, document, new_nonce())))
    moto.client("ec2").create_tags(Resources=[described["InstanceId"]], Tags=[{"Key": "team", "Value": "payments"}])
    assert_refused(exchange(aws_chit, signed(aws_regions, document, new_nonce()), scope="admin:all"), error="invalid_scope")
    nonce = new_nonce()
    assert_issued(exchange(aws_chit, signed(aws_regions, document, nonce)))
    assert_refused(exchange(aws_chit, signed(aws_regions, document, new_nonce())))


def test_racing_first_exchanges_bind_one_nonce(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer, instance: dict) -> None:
    document = moto.document_for(instance)
    nonces = [new_nonce() for _ in range(4)]
    tokens = [signed(aws_regions, document, nonce) for nonce in nonces]
    barrier = threading.Barrier(len(tokens))
    statuses: dict[str, int] = {}

    def attempt(nonce: str, token: str) -> None:
        barrier.wait()
        statuses[nonce] = exchange(aws_chit, token).status_code

    threads = [threading.Thread(target=attempt, args=pair) for pair in zip(nonces, tokens)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [nonce for nonce, status in statuses.items() if status == 200]
    assert len(winners) == 1, statuses
    assert sorted(statuses.values()) == [200, 400, 400, 400]
    for nonce, token in zip(nonces, tokens):
        assert exchange(aws_chit, token).status_code == (200 if nonce in winners else 400)


def document_token(regions: AwsRegions, nonce: str, pending_time: str = "2026-01-15T14:12:11Z") -> str:
    return signed(regions, instance_document(pending_time=pending_time), nonce)


def test_interleaved_first_exchanges_bind_one_nonce(aws_regions: AwsRegions) -> None:
    """Both verify before either commits: the second commit finds the binding taken."""
    attestor = verifier(certificates_dir=aws_regions.directory)
    first, second = new_nonce(), new_nonce()

    async def scenario() -> None:
        a = await attestor.verify(document_token(aws_regions, first), time.time())
        b = await attestor.verify(document_token(aws_regions, second), time.time())
        await a.replay_guard.commit()
        with pytest.raises(InvalidEvidence, match="another nonce"):
            await b.replay_guard.commit()
        # The same nonce racing a refresh of the binding is fine.
        c = await attestor.verify(document_token(aws_regions, first, "2026-02-01T00:00:00Z"), time.time())
        d = await attestor.verify(document_token(aws_regions, first), time.time())
        await c.replay_guard.commit()
        with pytest.raises(InvalidEvidence, match="older"):
            await d.replay_guard.commit()

    asyncio.run(scenario())


def test_the_store_keeps_a_hash_of_the_nonce_never_the_nonce(aws_regions: AwsRegions) -> None:
    store = MemoryStore()
    attestor = verifier(store, certificates_dir=aws_regions.directory)
    nonce = new_nonce()

    async def scenario() -> str | None:
        attestation = await attestor.verify(document_token(aws_regions, nonce), time.time())
        await attestation.replay_guard.commit()
        return await store.get("iid:i-0b02d936754a6d637")

    stored = asyncio.run(scenario())
    assert stored is not None and nonce not in stored
    assert len(stored.split()[0]) == 64  # SHA-256, hex


def test_forgetting_an_instance_lets_a_new_nonce_bind(aws_regions: AwsRegions) -> None:
    store = MemoryStore()
    attestor = verifier(store, certificates_dir=aws_regions.directory)
    old, new = new_nonce(), new_nonce()

    async def scenario() -> None:
        await (await attestor.verify(document_token(aws_regions, old), time.time())).replay_guard.commit()
        with pytest.raises(InvalidEvidence):
            await attestor.verify(document_token(aws_regions, new), time.time())
        assert await InstanceBindings(store, 60).forget("i-0b02d936754a6d637") is True
        assert await InstanceBindings(store, 60).forget("i-0b02d936754a6d637") is False
        await (await attestor.verify(document_token(aws_regions, new), time.time())).replay_guard.commit()
        with pytest.raises(InvalidEvidence):
            await attestor.verify(document_token(aws_regions, old), time.time())

    asyncio.run(scenario())


class UnavailableStore(MemoryStore):
    """A state store that stops answering after `answers` calls."""

    def __init__(self, answers: int):
        super().__init__()
        self.answers = answers

    def _tick(self, now: float) -> None:
        self.answers -= 1
        if self.answers < 0:
            raise StateUnavailable("connection refused")
        super()._tick(now)


def test_state_store_down_makes_the_check_unavailable(aws_regions: AwsRegions) -> None:
    async def scenario() -> None:
        with pytest.raises(EvidenceUnavailable):
            await verifier(UnavailableStore(0), certificates_dir=aws_regions.directory).verify(document_token(aws_regions, new_nonce()), time.time())
        attestation = await verifier(UnavailableStore(1), certificates_dir=aws_regions.directory).verify(
            document_token(aws_regions, new_nonce()), time.time()
        )
        with pytest.raises(EvidenceUnavailable):
            await attestation.replay_guard.commit()

    asyncio.run(scenario())


# --- the EC2 API unreachable: fail closed ----------------------------------------------------


def test_ec2_api_unreachable_is_503(outage_chit: ChitServer, aws_regions: AwsRegions) -> None:
    body = assert_refused(exchange(outage_chit, document_token(aws_regions, new_nonce())), 503, "temporarily_unavailable")
    audit = outage_chit.audit_for(body["decision_id"])
    assert audit["outcome"] == "unavailable" and "ec2 describe_instances" in audit["reasons"][0]
    # Nothing was bound: another nonce is still free to bind once EC2 is back.
    assert_refused(exchange(outage_chit, document_token(aws_regions, new_nonce())), 503, "temporarily_unavailable")


# --- the collector (client side): IMDSv2 and the instance nonce --------------------------------

COLLECTED_INSTANCE = "i-0123456789abcdef0"


@pytest.fixture
def imds(aws_regions: AwsRegions) -> Iterator[ImdsStandIn]:
    document = instance_document(COLLECTED_INSTANCE)
    stand_in = ImdsStandIn(document, aws_regions.us_east_1.signature(document), aws_regions.us_east_1_rsa2048.rsa2048(document))
    yield stand_in
    stand_in.stop()


def test_the_imds_stand_in_is_as_strict_as_imdsv2(imds: ImdsStandIn) -> None:
    document = imds.url + "/latest/dynamic/instance-identity/document"
    assert httpx.get(document).status_code == 401
    assert httpx.get(document, headers={"X-aws-ec2-metadata-token": "forged"}).status_code == 401
    assert httpx.put(imds.url + "/latest/api/token").status_code == 400
    forwarded = {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "203.0.113.7"}
    assert httpx.put(imds.url + "/latest/api/token", headers=forwarded).status_code == 403


@pytest.mark.parametrize("form", ["signature", "rsa2048"])
def test_collector_speaks_imdsv2_and_sends_what_the_verifier_reads(imds: ImdsStandIn, aws_regions: AwsRegions, tmp_path: Path, form: str) -> None:
    subject = AwsIidCollector(tmp_path / "nonce", imds.url, form).collect()  # type: ignore[arg-type]
    assert subject.token_type == AWS_IID_TYPE
    evidence = parse_subject_token(subject.value)
    assert evidence.document == imds.bodies["document"].encode() and evidence.form == form  # the bytes IMDS served
    assert evidence.nonce == (tmp_path / "nonce").read_text().strip()
    attestation = verify(verifier(certificates_dir=aws_regions.directory), subject.value)
    assert attestation.facts["instance_id"] == COLLECTED_INSTANCE
    # One session token, then both GETs with it: exactly IMDSv2.
    put, *gets = imds.requests
    assert (put.method, put.path) == ("PUT", "/latest/api/token")
    assert 1 <= int(put.headers["x-aws-ec2-metadata-token-ttl-seconds"]) <= 21600
    identity = "/latest/dynamic/instance-identity/"
    assert [(g.method, g.path) for g in gets] == [("GET", identity + "document"), ("GET", identity + form)]
    assert {g.headers["x-aws-ec2-metadata-token"] for g in gets} == set(imds.sessions)


def test_the_nonce_is_created_once_owner_only_and_reused(imds: ImdsStandIn, tmp_path: Path) -> None:
    nonce_file = tmp_path / "chit" / "aws-iid-nonce"
    collector = AwsIidCollector(nonce_file, imds.url)
    first = parse_subject_token(collector.collect().value).nonce
    assert nonce_file.stat().st_mode & 0o777 == 0o600
    assert nonce_file.parent.stat().st_mode & 0o777 == 0o700
    assert parse_subject_token(collector.collect().value).nonce == first
    assert parse_subject_token(AwsIidCollector(nonce_file, imds.url).collect().value).nonce == first
    assert sorted(p.name for p in nonce_file.parent.iterdir()) == ["aws-iid-nonce"]  # no temporary file left


def test_an_operators_nonce_file_is_used_as_it_is(imds: ImdsStandIn, tmp_path: Path) -> None:
    nonce_file = tmp_path / "nonce"
    nonce_file.write_text("operator-chosen-nonce-0123456789\n")
    nonce_file.chmod(0o600)
    assert parse_subject_token(AwsIidCollector(nonce_file, imds.url).collect().value).nonce == "operator-chosen-nonce-0123456789"


def test_racing_collectors_create_one_nonce(tmp_path: Path) -> None:
    nonce_file = tmp_path / "nonce"
    start = threading.Barrier(8)
    found: list[str] = []

    def create() -> None:
        start.wait()
        found.append(instance_nonce(nonce_file))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8 and len(set(found)) == 1
    assert nonce_file.read_text().strip() == found[0]


def unsafe_nonce_files(directory: Path) -> dict[str, Path]:
    good = "a-perfectly-fine-nonce-0123456789"
    files = {}
    for name, mode, content in (("group-readable", 0o640, good), ("world-readable", 0o604, good), ("too short", 0o600, "short"),
                                ("with a space", 0o600, "a nonce with spaces in it"), ("too long", 0o600, "x" * 129)):
        files[name] = directory / name.replace(" ", "-")
        files[name].write_text(content)
        files[name].chmod(mode)
    files["symlink"] = directory / "link"
    files["symlink"].symlink_to(files["too short"])
    files["directory"] = directory / "a-directory"
    files["directory"].mkdir()
    return files


@pytest.mark.parametrize("case", ["group-readable", "world-readable", "too short", "with a space", "too long", "symlink", "directory"])
def test_an_unsafe_or_malformed_nonce_file_is_refused(tmp_path: Path, case: str) -> None:
    path = unsafe_nonce_files(tmp_path)[case]
    with pytest.raises(CollectionFailed, match="nonce file") as raised:
        instance_nonce(path)
    assert "a-perfectly-fine-nonce" not in str(raised.value)


def test_off_ec2_the_platform_is_absent_and_no_nonce_is_made(tmp_path: Path) -> None:
    with pytest.raises(PlatformAbsent, match="no EC2 instance metadata service"):
        AwsIidCollector(tmp_path / "nonce", closed_port_url()).collect()
    assert not (tmp_path / "nonce").exists()


def test_imds_without_the_signature_fails_the_collection(imds: ImdsStandIn, tmp_path: Path) -> None:
    imds.bodies["signature"] = None
    with pytest.raises(CollectionFailed, match="IMDS refused /latest/dynamic/instance-identity/signature: HTTP 404"):
        AwsIidCollector(tmp_path / "nonce", imds.url).collect()
