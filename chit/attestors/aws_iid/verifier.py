"""The aws-iid verifier: every check of an instance identity document, in order."""

from __future__ import annotations

import dataclasses
import logging

from chit.attestors.aws_iid import KIND, ec2
from chit.attestors.aws_iid.bindings import InstanceBindings
from chit.attestors.aws_iid.certificates import SHIPPED_CERTIFICATES, RegionCertificates
from chit.attestors.aws_iid.config import AwsIidSettings
from chit.attestors.aws_iid.document import parse_document
from chit.attestors.aws_iid.envelope import parse_subject_token
from chit.attestors.aws_iid.signature import verify_document_signature
from chit.attestors.base import Attestation, DocumentVerifier, InvalidEvidence
from chit.aws import AwsClients
from chit.protocol import TOKEN_TYPE_AWS_IID
from chit.state import StateStore

log = logging.getLogger("chit.attestors.aws_iid")


class AwsIidVerifier(DocumentVerifier):
    kind = KIND
    token_type = TOKEN_TYPE_AWS_IID

    def __init__(self, config: AwsIidSettings, trust_domain: str, state: StateStore, aws: AwsClients | None = None):
        """`aws` is needed only with `verify_instance`."""
        self.config = config
        self.trust_domain = trust_domain
        self.certificates = RegionCertificates(config.certificates_dir or SHIPPED_CERTIFICATES)
        self.regions = None if config.regions is None else frozenset(config.regions)
        self.account_ids = None if config.account_ids is None else frozenset(config.account_ids)
        self.bindings = InstanceBindings(state, config.binding_ttl_seconds)
        if config.verify_instance and aws is None:
            raise ValueError("attestors.aws_iid.verify_instance needs AWS API access")
        self.aws = aws

    async def verify(self, subject_token: str, now: float) -> Attestation:
        evidence = parse_subject_token(subject_token)
        identity = parse_document(evidence.document)
        verify_document_signature(evidence, self.certificates.key(evidence.form, identity.region, now))
        # docs/reference/policy-contract.md "Allowlists": refused as invalid evidence (400, audit `invalid`).
        if self.regions is not None and identity.region not in self.regions:
            raise InvalidEvidence(f"region {identity.region} is not allowed")
        if self.account_ids is not None and identity.account_id not in self.account_ids:
            raise InvalidEvidence(f"account {identity.account_id} is not allowed")
        guard = await self.bindings.check(identity.instance_id, evidence.nonce, identity.pending_time)
        return Attestation(
            kind=KIND,
            subject=f"spiffe://{self.trust_domain}/aws/{identity.account_id}/{identity.region}/{identity.instance_id}",
            facts={
                "account_id": identity.account_id,
                "region": identity.region,
                "availability_zone": identity.availability_zone,
                "instance_id": identity.instance_id,
                "image_id": identity.image_id,
                "instance_type": identity.instance_type,
            },
            claims=identity.claims,
            att={"account_id": identity.account_id, "region": identity.region, "instance_id": identity.instance_id},
            replay_guard=guard,
        )

    async def enrich(self, attestation: Attestation) -> Attestation:
        """`verify_instance`: DescribeInstances must show this instance pending or running."""
        if not self.config.verify_instance:
            return attestation
        assert self.aws is not None
        role_arn = self.config.describe_roles.get(attestation.facts["account_id"])
        facts = await ec2.described_facts(self.aws, attestation, role_arn)
        return dataclasses.replace(attestation, facts={**attestation.facts, **facts})
