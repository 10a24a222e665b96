"""AWS STS credentials (requested_token_type aws-credentials) for subjects of every
kind, against moto as the real local AWS API: AssumeRole with chit's own
credentials, or AssumeRoleWithWebIdentity with none at all."""

from __future__ import annotations

import copy
import datetime
import json
import re
import time
from pathlib import Path
from typing import Iterator

import jwt
import pytest

from chit.server.sts import role_session_name
from tests.conftest import AWS_BINDINGS, ROLE_AGENT, ROLE_DEPLOYER, ROLE_DESCRIBER, SESSION_POLICY, AwsRegions, aws_chit_config
from tests.factories import (
    AWS_CREDENTIALS_TYPE,
    AWS_IID_TYPE,
    AWS_TEST_ENV,
    JWT_TYPE,
    MOTO_ACCOUNT,
    ChitServer,
    ClusterIssuer,
    DocumentServer,
    MotoServer,
    assert_refused,
    copy_policy,
    iid_token,
    new_nonce,
)

DEPLOYER = "spiffe://example.org/k8s/prod/ns/payments/sa/deployer"


def credentials_for(chit: ChitServer, subject_token: str, **fields: str) -> dict:
    response = chit.exchange(subject_token, requested_token_type=AWS_CREDENTIALS_TYPE, **fields)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == AWS_CREDENTIALS_TYPE and body["token_type"] == "N_A"
    assert response.headers["cache-control"] == "no-store"
    return body


def expiration(credentials: dict) -> float:
    return datetime.datetime.strptime(credentials["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def tags_sent(form: dict[str, str]) -> dict[str, str]:
    """Session tags from a recorded AssumeRole form (Tags.member.N.Key / .Value)."""
    keys = {k.split(".")[2]: v for k, v in form.items() if re.fullmatch(r"Tags\.member\.\d+\.Key", k)}
    return {key: form[f"Tags.member.{n}.Value"] for n, key in keys.items()}


def list_sent(form: dict[str, str], name: str) -> list[str]:
    return [v for k, v in sorted(form.items()) if re.fullmatch(rf"{name}\.member\.\d+", k)]


# --- AssumeRole ---------------------------------------------------------------------------


def test_kubernetes_subject_gets_sts_credentials(aws_chit: ChitServer, prod_issuer: ClusterIssuer, moto: MotoServer) -> None:
    before = time.time()
    body = credentials_for(aws_chit, prod_issuer.token(service_account="deployer"))
    credentials = body["aws_credentials"]
    assert set(credentials) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert credentials["Version"] == 1
    assert body["access_token"] == credentials["SessionToken"]
    assert 895 <= body["expires_in"] <= 900
    assert before + 890 <= expiration(credentials) <= time.time() + 905
    identity = moto.client("sts", credentials=credentials).get_caller_identity()
    session_name = role_session_name(DEPLOYER)
    assert identity["Arn"] == f"arn:aws:sts::{MOTO_ACCOUNT}:assumed-role/deployer/{session_name}"


def test_assume_role_request_carries_duration_session_policy_and_tags(aws_chit: ChitServer, prod_issuer: ClusterIssuer, moto: MotoServer) -> None:
    credentials_for(aws_chit, prod_issuer.token(service_account="deployer"))
    form = [r.form for r in moto.requests("AssumeRole") if r.form["RoleArn"] == ROLE_DEPLOYER][-1]
    assert form["DurationSeconds"] == "900"
    assert form["RoleSessionName"] == role_session_name(DEPLOYER)
    assert json.loads(form["Policy"]) == SESSION_POLICY
    tags = tags_sent(form)
    assert tags == {
        "team": "payments",  # the policy's
        "chit:subject": DEPLOYER,
        "chit:kind": "kubernetes",
        "chit:cluster": "prod",
        "chit:namespace": "payments",
        "chit:service_account": "deployer",
    }
    # chit's own tags survive role chaining; the policy's are the policy's business.
    assert sorted(list_sent(form, "TransitiveTagKeys")) == sorted(k for k in tags if k.startswith("chit:"))


def test_the_audit_line_names_the_credential_never_its_secrets(aws_chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    response = aws_chit.exchange(prod_issuer.token(service_account="deployer"), requested_token_type=AWS_CREDENTIALS_TYPE)
    credentials = response.json()["aws_credentials"]
    audit = aws_chit.audit_lines()
    line = next(a for a in audit if a["jti"] == credentials["AccessKeyId"])
    assert line["outcome"] == "issued" and line["ttl"] == response.json()["expires_in"]
    assert line["subject"] == DEPLOYER and line["kind"] == "kubernetes"
    text = (aws_chit.directory / "audit.log").read_text()
    assert credentials["SecretAccessKey"] not in text
    assert credentials["SessionToken"] not in text and credentials["SessionToken"][:32] not in text


def test_instance_gets_sts_credentials(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer) -> None:
    instance = moto.launch_instance(tags={"team": "payments"})
    document = moto.document_for(instance)
    token = iid_token(document, new_nonce(), signature=aws_regions.us_east_1.signature(document))
    body = credentials_for(aws_chit, token, subject_token_type=AWS_IID_TYPE)
    subject = f"spiffe://example.org/aws/{MOTO_ACCOUNT}/us-east-1/{instance['InstanceId']}"
    identity = moto.client("sts", credentials=body["aws_credentials"]).get_caller_identity()
    assert identity["Arn"] == f"arn:aws:sts::{MOTO_ACCOUNT}:assumed-role/agent/{role_session_name(subject)}"
    form = [r.form for r in moto.requests("AssumeRole") if r.form["RoleArn"] == ROLE_AGENT][-1]
    assert tags_sent(form)["chit:instance_id"] == instance["InstanceId"]
    assert tags_sent(form)["chit:account_id"] == MOTO_ACCOUNT


def test_describe_instances_runs_as_the_accounts_describe_role(aws_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer) -> None:
    instance = moto.launch_instance(tags={"team": "payments"})
    document = moto.document_for(instance)
    response = aws_chit.exchange(iid_token(document, new_nonce(), signature=aws_regions.us_east_1.signature(document)), subject_token_type=AWS_IID_TYPE)
    assert response.status_code == 200, response.text
    assert any(r.form["RoleArn"] == ROLE_DESCRIBER for r in moto.requests("AssumeRole"))
    describe = moto.requests("DescribeInstances")[-1]
    assert "Credential=testing/" not in describe.headers["Authorization"]  # the assumed role's key, not chit's


def test_aws_credentials_need_a_role_in_the_decision(aws_chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    body = assert_refused(aws_chit.exchange(prod_issuer.token(service_account="agent"), requested_token_type=AWS_CREDENTIALS_TYPE))
    audit = aws_chit.audit_for(body["decision_id"])
    assert audit["outcome"] == "denied" and "decision.aws.role_arn absent" in audit["reasons"][-1]


def test_decision_ttl_under_900_refuses_sts_credentials(aws_chit: ChitServer, prod_issuer: ClusterIssuer, moto: MotoServer) -> None:
    calls = len(moto.requests("AssumeRole"))
    body = assert_refused(aws_chit.exchange(prod_issuer.token(service_account="short-lived"), requested_token_type=AWS_CREDENTIALS_TYPE))
    audit = aws_chit.audit_for(body["decision_id"])
    assert audit["outcome"] == "denied" and "under the 900 s" in audit["reasons"][-1]
    assert len(moto.requests("AssumeRole")) == calls  # STS was never asked


def test_policy_cannot_set_chits_own_tags(aws_chit: ChitServer, prod_issuer: ClusterIssuer, moto: MotoServer) -> None:
    calls = len(moto.requests("AssumeRole"))
    body = assert_refused(aws_chit.exchange(prod_issuer.token(service_account="tag-thief"), requested_token_type=AWS_CREDENTIALS_TYPE))
    audit = aws_chit.audit_for(body["decision_id"])
    assert audit["outcome"] == "denied" and "'CHIT:subject'" in audit["reasons"][-1]
    assert len(moto.requests("AssumeRole")) == calls


def test_sts_unreachable_is_503(outage_chit: ChitServer, prod_issuer: ClusterIssuer) -> None:
    response = outage_chit.exchange(prod_issuer.token(service_account="deployer"), requested_token_type=AWS_CREDENTIALS_TYPE)
    body = assert_refused(response, 503, "temporarily_unavailable")
    audit = outage_chit.audit_for(body["decision_id"])
    assert audit["outcome"] == "unavailable" and "sts assume_role" in audit["reasons"][-1]


# --- RoleSessionName --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        DEPLOYER,
        "spiffe://example.org/aws/123456789012/us-east-1/i-0b02d936754a6d637",
        "spiffe://example.org/gcp/sa/agent@project.iam.gserviceaccount.com",
        "spiffe://a-very-long-trust-domain.example.org/k8s/" + "c" * 63 + "/ns/" + "n" * 63 + "/sa/" + "s" * 200,
        "spiffe://example.org/k8s/prod/ns/a b/sa/ünïcode",
    ],
)
def test_role_session_name_is_valid_and_deterministic(subject: str) -> None:
    name = role_session_name(subject)
    assert re.fullmatch(r"[A-Za-z0-9_+=,.@-]{2,64}", name), name
    assert role_session_name(subject) == name


def test_role_session_names_do_not_collide() -> None:
    # These sanitize to the same readable text; the hash keeps them apart.
    subjects = [
        "spiffe://example.org/k8s/prod/ns/a.b/sa/c",
        "spiffe://example.org/k8s/prod/ns/a/b/sa/c",
        "spiffe://example.org/k8s/prod/ns/a b/sa/c",
        "spiffe://other.org/k8s/prod/ns/a.b/sa/c",
        "spiffe://example.org/k8s/" + "x" * 100 + "/ns/a/sa/c",
        "spiffe://example.org/k8s/" + "y" * 100 + "/ns/a/sa/c",
    ]
    names = [role_session_name(s) for s in subjects]
    assert len(set(names)) == len(names)
    assert role_session_name(DEPLOYER).startswith("k8s.prod.ns.payments.sa.deployer.")


# --- AssumeRoleWithWebIdentity: no AWS credentials on chit -------------------------------------


@pytest.fixture(scope="module")
def web_identity_chit(
    tmp_path_factory: pytest.TempPathFactory,
    documents: DocumentServer,
    prod_issuer: ClusterIssuer,
    aws_regions: AwsRegions,
    moto: MotoServer,
) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("web-identity-chit")
    bindings = copy.deepcopy(AWS_BINDINGS)
    del bindings["bindings"]["aws_iid"][MOTO_ACCOUNT]["us-east-1"]["tags"]  # no verify_instance: no tags known
    policy_dir = copy_policy(directory / "policies", bindings)
    config = aws_chit_config(documents, aws_regions, policy_dir, endpoint_url=moto.url, sts_mode="web_identity")
    config["attestors"]["aws_iid"]["verify_instance"] = False
    config["attestors"]["aws_iid"]["account_ids"] = None
    no_credentials = {**AWS_TEST_ENV, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": ""}
    server = ChitServer(directory, config, env=no_credentials).start()
    yield server
    server.stop()


def test_web_identity_mode_needs_no_aws_credentials(web_identity_chit: ChitServer, prod_issuer: ClusterIssuer, moto: MotoServer) -> None:
    body = credentials_for(web_identity_chit, prod_issuer.token(service_account="deployer"))
    identity = moto.client("sts", credentials=body["aws_credentials"]).get_caller_identity()
    assert identity["Arn"] == f"arn:aws:sts::{MOTO_ACCOUNT}:assumed-role/deployer/{role_session_name(DEPLOYER)}"
    request = moto.requests("AssumeRoleWithWebIdentity")[-1]
    assert "Authorization" not in request.headers  # unsigned: chit holds no AWS key
    assert request.form["DurationSeconds"] == "900" and json.loads(request.form["Policy"]) == SESSION_POLICY


def test_web_identity_token_is_chits_jwt_for_sts(web_identity_chit: ChitServer, prod_issuer: ClusterIssuer, moto: MotoServer) -> None:
    credentials_for(web_identity_chit, prod_issuer.token(service_account="deployer"))
    token = moto.requests("AssumeRoleWithWebIdentity")[-1].form["WebIdentityToken"]
    # What STS does with it: verify it with the keys of chit's issuer (its OIDC provider).
    header, claims = web_identity_chit.verify_issued(token, "sts.amazonaws.com")
    assert header["alg"] == "ES256" and header["typ"] == "JWT"
    assert claims["iss"] == web_identity_chit.url and claims["sub"] == DEPLOYER
    assert claims["aud"] == "sts.amazonaws.com" and claims["exp"] - claims["iat"] == 300
    tags = claims["https://aws.amazon.com/tags"]
    assert tags["principal_tags"]["chit:subject"] == [DEPLOYER]
    assert tags["principal_tags"]["team"] == ["payments"]
    assert "chit:subject" in tags["transitive_tag_keys"] and "team" not in tags["transitive_tag_keys"]
    # It is never evidence for chit itself.
    assert_refused(web_identity_chit.exchange(token))
    assert jwt.decode(token, options={"verify_signature": False})["jti"]


def test_web_identity_mode_keeps_sts_for_itself(web_identity_chit: ChitServer, prod_issuer: ClusterIssuer, moto: MotoServer) -> None:
    """A decision listing `sts.amazonaws.com` still gets STS credentials through chit, never a JWT
    for STS that the workload could use for AssumeRoleWithWebIdentity itself (docs/reference/http-api.md "Reserved audience")."""
    body = credentials_for(web_identity_chit, prod_issuer.token(service_account="sts-audience"))
    assert moto.client("sts", credentials=body["aws_credentials"]).get_caller_identity()["Arn"].startswith(
        f"arn:aws:sts::{MOTO_ACCOUNT}:assumed-role/deployer/"
    )
    for fields in ({}, {"audience": "sts.amazonaws.com"}, {"requested_token_type": JWT_TYPE}):
        refused = assert_refused(web_identity_chit.exchange(prod_issuer.token(service_account="sts-audience"), **fields), error="invalid_target")
        assert "access_token" not in refused and web_identity_chit.audit_for(refused["decision_id"])["jti"] is None


def test_web_identity_mode_serves_instances_too(web_identity_chit: ChitServer, aws_regions: AwsRegions, moto: MotoServer) -> None:
    document = moto.document_for(moto.launch_instance())
    token = iid_token(document, new_nonce(), signature=aws_regions.us_east_1.signature(document))
    body = credentials_for(web_identity_chit, token, subject_token_type=AWS_IID_TYPE)
    assert moto.client("sts", credentials=body["aws_credentials"]).get_caller_identity()["Arn"].startswith(
        f"arn:aws:sts::{MOTO_ACCOUNT}:assumed-role/agent/"
    )


def test_configured_ttl_under_900_refuses_sts_credentials(
    tmp_path: Path, documents: DocumentServer, prod_issuer: ClusterIssuer, aws_regions: AwsRegions, moto: MotoServer
) -> None:
    """tokens.ttl_seconds caps every credential chit hands out; STS's cannot be shorter than 900 s."""
    policy_dir = copy_policy(tmp_path / "policies", AWS_BINDINGS)
    config = {**aws_chit_config(documents, aws_regions, policy_dir, endpoint_url=moto.url), "tokens": {"ttl_seconds": 600}}
    server = ChitServer(tmp_path / "chit", config, env=AWS_TEST_ENV).start()
    try:
        calls = len(moto.requests("AssumeRole"))
        body = assert_refused(server.exchange(prod_issuer.token(service_account="deployer"), requested_token_type=AWS_CREDENTIALS_TYPE))
        assert "tokens.ttl_seconds is under 900" in body["error_description"]
        assert len(moto.requests("AssumeRole")) == calls
    finally:
        server.stop()
