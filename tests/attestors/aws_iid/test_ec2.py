"""`verify_instance`: DescribeInstances (moto's EC2) must show the instance running; its
facts reach the policy; an EC2 API that cannot answer fails closed."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from chit.attestors.aws_iid.verifier import AwsIidVerifier
from chit.aws import AwsClients
from chit.attestors.aws_iid.config import AwsIidSettings
from chit.aws import Aws
from chit.state import MemoryStore
from tests.conftest import AwsRegions
from tests.factories import (
    AWS_TEST_ENV,
    MOTO_ACCOUNT,
    ChitServer,
    MotoServer,
    assert_issued,
    assert_refused,
    instance_document,
    iid_token,
    new_nonce,
)
from tests.attestors.aws_iid.conftest import DB, document_token, exchange, signed


# --- exchanges of running instances (moto's EC2) -------------------------------------------------


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


# --- the EC2 API unreachable: fail closed ----------------------------------------------------


def test_ec2_api_unreachable_is_503(outage_chit: ChitServer, aws_regions: AwsRegions) -> None:
    body = assert_refused(exchange(outage_chit, document_token(aws_regions, new_nonce())), 503, "temporarily_unavailable")
    audit = outage_chit.audit_for(body["decision_id"])
    assert audit["outcome"] == "unavailable" and "ec2 describe_instances" in audit["reasons"][0]
    # Nothing was bound: another nonce is still free to bind once EC2 is back.
    assert_refused(exchange(outage_chit, document_token(aws_regions, new_nonce())), 503, "temporarily_unavailable")
