"""The aws-iam verifier: a signed GetCallerIdentity request, checked, sent to STS once."""

from __future__ import annotations

import hashlib

from chit.attestors.aws_iam import KIND
from chit.attestors.aws_iam.caller import get_caller_identity, sts_client
from chit.attestors.aws_iam.config import AwsIamSettings
from chit.attestors.aws_iam.envelope import parse_subject_token
from chit.attestors.aws_iam.principal import principal
from chit.attestors.aws_iam.request import MAX_SKEW_SECONDS, check_request
from chit.attestors.base import Attestation, DocumentVerifier, InvalidEvidence
from chit.attestors.jose import LEEWAY_SECONDS
from chit.attestors.single_use import unused
from chit.protocol import TOKEN_TYPE_AWS_IAM
from chit.state import StateStore


class AwsIamVerifier(DocumentVerifier):
    kind = KIND
    token_type = TOKEN_TYPE_AWS_IAM

    def __init__(self, config: AwsIamSettings, *, trust_domain: str, issuer: str, state: StateStore):
        self.config = config
        self.trust_domain = trust_domain
        # No configured server id means chit's own issuer URL.
        self.server_id = config.server_id or issuer
        self.endpoints = frozenset(config.sts_endpoints)
        self.account_ids = None if config.account_ids is None else frozenset(config.account_ids)
        self.state = state
        self.timeout = config.timeout_ms / 1000
        self.client = sts_client(self.timeout)

    async def verify(self, subject_token: str, now: float) -> Attestation:
        request = check_request(parse_subject_token(subject_token), self.endpoints, self.server_id, now)
        # A signature is accepted once, for as long as STS could accept it (X-Amz-Date
        # ± 15 minutes): refused before anything is sent when it was used already.
        valid_until = request.signed_at + MAX_SKEW_SECONDS
        key = "awsiam:once:" + hashlib.sha256(request.signature.encode()).hexdigest()
        replay_guard = await unused(self.state, key, valid_until - now + LEEWAY_SECONDS, "aws-iam signature")
        caller = await get_caller_identity(self.client, request, self.timeout)
        found = principal(caller.arn, caller.account, caller.user_id)
        if self.account_ids is not None and found.account_id not in self.account_ids:
            raise InvalidEvidence(f"account {found.account_id} is not allowed")
        if found.principal_type == "user" and not self.config.allow_iam_users:
            raise InvalidEvidence("IAM users are not accepted (attestors.aws_iam.allow_iam_users)")
        path = "role" if found.principal_type == "assumed-role" else "user"
        return Attestation(
            kind=KIND,
            subject=f"spiffe://{self.trust_domain}/aws-iam/{found.account_id}/{path}/{found.name}",
            facts=found.facts,
            claims={"Arn": caller.arn, "Account": caller.account, "UserId": caller.user_id},
            att={"account_id": found.account_id, path: found.name},
            # What was proven is the possession of the credentials when the request was
            # signed; STS would take the request no longer than this.
            expires_at=valid_until,
            replay_guard=replay_guard,
        )

    async def close(self) -> None:
        await self.client.aclose()
