"""`verify_instance`: DescribeInstances must show the document's instance pending or
running, in its account, zone and image; its tags, VPC, subnet and instance profile
become facts.
"""

from __future__ import annotations

from typing import Any, Mapping

from chit.attestors.base import Attestation, EvidenceUnavailable, InvalidEvidence
from chit.aws import AwsClients, AwsRefused, AwsUnavailable


_RUNNING_STATES = frozenset({"pending", "running"})


def instance_facts(answer: Mapping[str, Any], attestation: Attestation) -> dict[str, Any]:
    """The facts DescribeInstances adds, once it agrees with the document."""
    facts = attestation.facts
    matches = [
        (reservation, instance)
        for reservation in answer.get("Reservations", [])
        for instance in reservation.get("Instances", [])
        if instance.get("InstanceId") == facts["instance_id"]
    ]
    if len(matches) != 1:
        raise InvalidEvidence("the instance does not exist")
    reservation, instance = matches[0]
    state = instance.get("State", {}).get("Name")
    if state not in _RUNNING_STATES:
        raise InvalidEvidence(f"the instance is {state}, not pending or running")
    if reservation.get("OwnerId") != facts["account_id"]:
        raise InvalidEvidence("the instance belongs to another account")
    if instance.get("Placement", {}).get("AvailabilityZone") != facts["availability_zone"]:
        raise InvalidEvidence("the instance is in another availability zone")
    if instance.get("ImageId") != facts["image_id"]:
        raise InvalidEvidence("the instance runs another image")
    extra: dict[str, Any] = {
        "state": state,
        "tags": {t["Key"]: t["Value"] for t in instance.get("Tags", []) if isinstance(t.get("Value"), str)},
    }
    for fact, value in (
        ("vpc_id", instance.get("VpcId")),
        ("subnet_id", instance.get("SubnetId")),
        ("instance_profile_arn", instance.get("IamInstanceProfile", {}).get("Arn")),
    ):
        if isinstance(value, str):
            extra[fact] = value
    return extra


async def described_facts(aws: AwsClients, attestation: Attestation, role_arn: str | None) -> dict[str, Any]:
    """DescribeInstances of the attested instance (as `role_arn` in its account, if
    given) and the facts it adds; InvalidEvidence when AWS says the instance is not
    one that may exchange, EvidenceUnavailable when AWS cannot answer."""
    facts = attestation.facts
    try:
        answer = await aws.call(
            "ec2", facts["region"], "describe_instances", {"InstanceIds": [facts["instance_id"]]}, role_arn=role_arn
        )
    except AwsRefused as error:
        if error.code == "InvalidInstanceID.NotFound":
            raise InvalidEvidence("the instance does not exist") from None
        raise EvidenceUnavailable(f"ec2 DescribeInstances: {error.code}") from None
    except AwsUnavailable as error:
        raise EvidenceUnavailable(str(error)) from None
    return instance_facts(answer, attestation)
