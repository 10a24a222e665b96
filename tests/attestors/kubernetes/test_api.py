"""Kubernetes API checks (`token_review`, `pod_lookup`), driven through a real
chit server against a stand-in API server that answers in the Kubernetes
API's JSON shapes: the cluster must vouch for exactly the token's pod, and
every container image of that pod reaches the policy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.factories import (
    ROOT,
    ChitServer,
    ClusterIssuer,
    DocumentServer,
    KubernetesApiStandIn,
    OpaStandIn,
    assert_issued,
    assert_refused,
    free_port,
)

ISSUER = "https://apicheck.k8s.chit.test"
CREDENTIAL = "chit-api-credential-" + uuid.uuid4().hex
DIGEST = "sha256:" + "a" * 64
BINDINGS = {"bindings": {"kubernetes": {
    "apicheck": {"payments": {"agent": {"scope": ["read:db"], "audience": ["https://db.internal"]}}},
    "prod": {"payments": {"agent": {"scope": ["read:db"], "audience": ["https://db.internal"]}}},
}}}


@pytest.fixture(scope="module")
def issuer(documents: DocumentServer) -> ClusterIssuer:
    issuer = ClusterIssuer("apicheck", ISSUER, "ES256")
    documents.serve("/apicheck/jwks", issuer.jwks())
    return issuer


@pytest.fixture(scope="module")
def api(issuer: ClusterIssuer) -> Iterator[KubernetesApiStandIn]:
    server = KubernetesApiStandIn(issuer, CREDENTIAL)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaStandIn]:
    with OpaStandIn.over(tmp_path_factory.mktemp("opa-k8s"), BINDINGS) as server:
        yield server


def cluster(documents: DocumentServer, server: str, token_file: Path, **checks: Any) -> dict[str, Any]:
    return {
        "name": "apicheck",
        "issuer": ISSUER,
        "jwks_uri": documents.url("/apicheck/jwks"),
        "audiences": ["chit"],
        "api": {"server": server, "token_file": str(token_file), "timeout_ms": 1000},
        **checks,
    }


@pytest.fixture(scope="module")
def chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, prod_issuer: ClusterIssuer, issuer: ClusterIssuer, api: KubernetesApiStandIn, opa: OpaStandIn) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("chit-k8s-api")
    (directory / "api-token").write_text(CREDENTIAL + "\n")
    prod = {"name": "prod", "issuer": prod_issuer.issuer, "jwks_uri": documents.url("/prod/openid/v1/jwks"), "audiences": ["chit"]}
    server = ChitServer(
        directory,
        {
            "policy": {"engine": "opa", "opa_url": opa.url, "timeout_ms": 3000},
            "attestors": {"kubernetes": {"clusters": [
                cluster(documents, api.url(""), directory / "api-token", token_review=True, pod_lookup=True), prod]}},
        },
    ).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(api: KubernetesApiStandIn, opa: OpaStandIn) -> Iterator[None]:
    api.failures.clear(), api.delays.clear(), api.reviews.clear(), api.requests.clear()
    opa.reset()
    yield


def pod_token(issuer: ClusterIssuer, pod_name: str | None = None) -> str:
    """A token for payments/agent in a pod of its own name (the stand-in keys pods by name)."""
    k8s = issuer.claims()["kubernetes.io"]
    k8s["pod"]["name"] = pod_name or f"agent-{uuid.uuid4().hex[:8]}"
    return issuer.token(**{"kubernetes.io": k8s})


def pod_name(token: str) -> str:
    import jwt

    return jwt.decode(token, options={"verify_signature": False})["kubernetes.io"]["pod"]["name"]


def policy_images(opa: OpaStandIn) -> Any:
    (request,) = [r for r in opa.requests() if r["path"] == "/v1/data/chit/decision"]
    return request["input"].get("images", "absent")


# --- the happy path -----------------------------------------------------------------------


def test_reviewed_token_of_a_running_pod_is_exchanged(chit: ChitServer, api: KubernetesApiStandIn, opa: OpaStandIn, issuer: ClusterIssuer) -> None:
    token = pod_token(issuer)
    api.add_pod(token)
    assert_issued(chit.exchange(token))
    (review, lookup) = api.requests
    assert review[:2] == ("POST", "/apis/authentication.k8s.io/v1/tokenreviews")
    assert review[2]["spec"] == {"token": token, "audiences": ["chit"]}
    assert review[2]["kind"] == "TokenReview" and review[2]["apiVersion"] == "authentication.k8s.io/v1"
    assert lookup[:2] == ("GET", f"/api/v1/namespaces/payments/pods/{pod_name(token)}")
    assert policy_images(opa) == [{"ref": f"registry.example/agent@{DIGEST}", "digest": DIGEST, "signed": False, "signers": []}]


def test_every_container_image_reaches_the_policy(chit: ChitServer, api: KubernetesApiStandIn, opa: OpaStandIn, issuer: ClusterIssuer) -> None:
    token = pod_token(issuer)
    pod = api.add_pod(token, images=[
        ("registry.example/agent:1.0", f"docker-pullable://registry.example/agent@{DIGEST}"),
        ("registry.example/sidecar:2", "sha256:" + "c" * 64),  # an image ID, not a manifest digest
        ("registry.example/waiting:3", ""),
    ])
    pod["spec"]["initContainers"] = [{"name": "init", "image": "registry.example/init:1"}]
    pod["status"]["initContainerStatuses"] = [{"name": "init", "image": "registry.example/init:1", "imageID": "registry.example/init@sha256:" + "b" * 64,
                                              "ready": True, "restartCount": 0, "state": {"terminated": {"exitCode": 0}}}]
    pod["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox"}]
    assert_issued(chit.exchange(token))
    assert [(i["ref"], i["digest"]) for i in policy_images(opa)] == [
        ("registry.example/init@sha256:" + "b" * 64, "sha256:" + "b" * 64),
        (f"registry.example/agent@{DIGEST}", DIGEST),
        ("registry.example/sidecar:2", None),
        ("registry.example/waiting:3", None),
        ("busybox", None),  # a debug container injected into the pod is an image like any other
    ]


def test_clusters_without_checks_never_call_an_api(chit: ChitServer, api: KubernetesApiStandIn, opa: OpaStandIn, prod_issuer: ClusterIssuer) -> None:
    assert_issued(chit.exchange(prod_issuer.token()))
    assert api.requests == []
    assert policy_images(opa) == "absent"  # input.images only where image lookup is enabled


def test_a_forged_token_never_reaches_the_api(chit: ChitServer, api: KubernetesApiStandIn, issuer: ClusterIssuer) -> None:
    other = ClusterIssuer("apicheck", ISSUER, "ES256")
    other.kid = issuer.kid
    assert_refused(chit.exchange(pod_token(other)))
    assert api.requests == []


# --- TokenReview: the cluster must vouch for exactly this token and pod ---------------------------


def drop_extra(*keys: str):
    def rewrite(status: dict) -> dict:
        for key in keys:
            status["user"]["extra"].pop(key)
        return status
    return rewrite


def replace(path: tuple[str, ...], value: Any):
    def rewrite(status: dict) -> dict:
        node = status
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return status
    return rewrite


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda status: {"user": {}, "error": "[invalid bearer token, service account token has been invalidated]"},
        replace(("authenticated",), False),
        replace(("audiences",), ["https://kubernetes.default.svc"]),
        replace(("audiences",), []),
        lambda status: {k: v for k, v in status.items() if k != "audiences"},
        replace(("user", "username"), "system:serviceaccount:ops:orchestrator"),
        replace(("user", "extra", "authentication.kubernetes.io/pod-name"), ["another-pod"]),
        replace(("user", "extra", "authentication.kubernetes.io/pod-uid"), [str(uuid.uuid4())]),
        replace(("user", "extra", "authentication.kubernetes.io/pod-uid"), []),
        drop_extra("authentication.kubernetes.io/pod-name"),
        drop_extra("authentication.kubernetes.io/pod-uid"),
        lambda status: {**status, "user": {k: v for k, v in status["user"].items() if k != "extra"}},
    ],
    ids=["invalidated", "not-authenticated", "other-audience", "no-audience", "audiences-absent", "other-user",
         "other-pod-name", "other-pod-uid", "empty-pod-uid", "pod-name-absent", "pod-uid-absent", "extras-absent"],
)
def test_token_review_mismatch_is_refused(chit: ChitServer, api: KubernetesApiStandIn, issuer: ClusterIssuer, rewrite) -> None:
    token = pod_token(issuer)
    api.add_pod(token)
    api.reviews[pod_name(token)] = rewrite
    body = assert_refused(chit.exchange(token))
    assert chit.audit_for(body["decision_id"])["outcome"] == "invalid"
    assert [r[0] for r in api.requests] == ["POST"]  # no pod lookup for a token the cluster does not vouch for


# --- pod lookup: the token's pod, running -----------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (None, "does not exist"),
        (lambda pod: pod["metadata"].update(uid=str(uuid.uuid4())), "UID"),
        (lambda pod: pod["status"].update(phase="Pending"), "not running"),
        (lambda pod: pod["status"].update(phase="Succeeded"), "not running"),
        (lambda pod: pod["status"].pop("phase"), "not running"),
        (lambda pod: pod["spec"].update(serviceAccountName="orchestrator"), "service account"),
    ],
    ids=["missing", "replaced", "pending", "succeeded", "no-phase", "other-service-account"],
)
def test_pod_mismatch_is_refused(chit: ChitServer, api: KubernetesApiStandIn, issuer: ClusterIssuer, change, message: str) -> None:
    token = pod_token(issuer)
    pod = api.add_pod(token)
    if change is None:
        api.pods.pop((pod["metadata"]["namespace"], pod["metadata"]["name"]))
    else:
        change(pod)
    body = assert_refused(chit.exchange(token))
    assert message in body["error_description"]
    assert chit.audit_for(body["decision_id"])["outcome"] == "invalid"


def test_actor_token_of_a_pod_that_is_gone_is_refused(chit: ChitServer, api: KubernetesApiStandIn, issuer: ClusterIssuer) -> None:
    """The actor's pod is looked up as the subject's is: a leaked token of a deleted pod is no actor."""
    subject, actor = pod_token(issuer), pod_token(issuer)
    api.add_pod(subject)
    body = assert_refused(chit.exchange(subject, actor_token=actor, actor_token_type="urn:ietf:params:oauth:token-type:jwt"))
    assert body["error_description"].startswith("actor_token invalid") and "does not exist" in body["error_description"]
    assert ("GET", f"/api/v1/namespaces/payments/pods/{pod_name(actor)}") in [r[:2] for r in api.requests]

    api.add_pod(actor)
    import jwt

    issued = assert_issued(chit.exchange(subject, actor_token=actor, actor_token_type="urn:ietf:params:oauth:token-type:jwt"))
    assert jwt.decode(issued["access_token"], options={"verify_signature": False})["act"]["sub"].endswith("/ns/payments/sa/agent")


# --- the API cannot answer: fail closed ------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 403, 429])
@pytest.mark.parametrize("call", ["review", "lookup"])
def test_api_errors_fail_closed(chit: ChitServer, api: KubernetesApiStandIn, issuer: ClusterIssuer, status: int, call: str) -> None:
    token = pod_token(issuer)
    api.add_pod(token)
    path = "/apis/authentication.k8s.io/v1/tokenreviews" if call == "review" else f"/api/v1/namespaces/payments/pods/{pod_name(token)}"
    api.failures[path] = status
    body = assert_refused(chit.exchange(token), 503, "temporarily_unavailable")
    line = chit.audit_for(body["decision_id"])
    assert line["outcome"] == "unavailable" and str(status) in line["reasons"][0]


def test_slow_api_fails_closed_within_the_timeout(chit: ChitServer, api: KubernetesApiStandIn, issuer: ClusterIssuer) -> None:
    token = pod_token(issuer)
    api.add_pod(token)
    api.delays[f"/api/v1/namespaces/payments/pods/{pod_name(token)}"] = 2.5
    response = chit.exchange(token)
    assert_refused(response, 503, "temporarily_unavailable")
    assert response.elapsed.total_seconds() < 2.4


def test_chit_credential_is_required(tmp_path: Path, documents: DocumentServer, api: KubernetesApiStandIn, opa: OpaStandIn, issuer: ClusterIssuer) -> None:
    """The API refuses a wrong token_file (401): chit cannot check, so 503; an unreachable API too."""
    (tmp_path / "wrong-token").write_text("not-the-credential")
    for server_url, token_file in ((api.url(""), tmp_path / "wrong-token"), (f"http://127.0.0.1:{free_port()}", tmp_path / "wrong-token"), (api.url(""), tmp_path / "missing")):
        directory = tmp_path / uuid.uuid4().hex[:6]
        server = ChitServer(directory, {
            "policy": {"engine": "opa", "opa_url": opa.url},
            "attestors": {"kubernetes": {"clusters": [cluster(documents, server_url, token_file, token_review=True)]}},
        }).start()
        try:
            token = pod_token(issuer)
            api.add_pod(token)
            assert_refused(server.exchange(token), 503, "temporarily_unavailable")
        finally:
            server.stop()


def test_token_review_alone_reports_no_images(tmp_path: Path, documents: DocumentServer, api: KubernetesApiStandIn, opa: OpaStandIn, issuer: ClusterIssuer) -> None:
    (tmp_path / "api-token").write_text(CREDENTIAL)
    server = ChitServer(tmp_path / "chit", {
        "policy": {"engine": "opa", "opa_url": opa.url},
        "attestors": {"kubernetes": {"clusters": [cluster(documents, api.url(""), tmp_path / "api-token", token_review=True)]}},
    }).start()
    try:
        token = pod_token(issuer)  # no pod registered: only the review is asked
        assert_issued(server.exchange(token))
        assert [r[0] for r in api.requests] == ["POST"]
        assert policy_images(opa) == "absent"
    finally:
        server.stop()


def test_api_from_a_kubeconfig(tmp_path: Path, documents: DocumentServer, api: KubernetesApiStandIn, opa: OpaStandIn, issuer: ClusterIssuer) -> None:
    """`api.kubeconfig`: server and credential from a kubeconfig's current context."""
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "chit",
        "clusters": [{"name": "apicheck", "cluster": {"server": api.url("")}}],
        "users": [{"name": "chit", "user": {"token": CREDENTIAL}}],
        "contexts": [{"name": "chit", "context": {"cluster": "apicheck", "user": "chit"}}],
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    entry = cluster(documents, api.url(""), tmp_path, token_review=True, pod_lookup=True)
    entry["api"] = {"kubeconfig": "kubeconfig", "timeout_ms": 1000}  # relative to the config file
    server = ChitServer(tmp_path / "chit", {"policy": {"engine": "opa", "opa_url": opa.url}, "attestors": {"kubernetes": {"clusters": [entry]}}})
    shutil.copy(tmp_path / "kubeconfig", tmp_path / "chit" / "kubeconfig")
    server.start()
    try:
        token = pod_token(issuer)
        api.add_pod(token)
        assert_issued(server.exchange(token))
        assert [r[0] for r in api.requests] == ["POST", "GET"]
    finally:
        server.stop()


def test_no_api_server_outside_a_cluster_stops_the_start(tmp_path: Path) -> None:
    config = {
        "issuer": "http://127.0.0.1:1",
        "signing": {"keys_dir": "keys"},
        "attestors": {"kubernetes": {"clusters": [{"name": "apicheck", "issuer": ISSUER, "jwks_file": "jwks.json", "audiences": ["chit"], "pod_lookup": True}]}},
    }
    (tmp_path / "chit.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    result = subprocess.run([sys.executable, "-m", "chit", "serve", "--config", str(tmp_path / "chit.yaml")], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "api.server is not set and chit does not run in a Kubernetes pod" in result.stderr
    assert "Traceback" not in result.stderr


def test_api_server_must_be_https_off_loopback(tmp_path: Path) -> None:
    from chit.server.config import ConfigError, parse_config

    document = {"issuer": "http://127.0.0.1:1", "attestors": {"kubernetes": {"clusters": [
        {"name": "c", "issuer": ISSUER, "jwks_file": "j", "audiences": ["chit"], "api": {"server": "http://10.0.0.1:6443"}}]}}}
    with pytest.raises(ConfigError, match="api.server must be an https:// URL"):
        parse_config(document, "chit.yaml", tmp_path)
    document["attestors"]["kubernetes"]["clusters"][0]["api"] = {"server": "https://10.0.0.1:6443", "kubeconfig": "kubeconfig"}
    with pytest.raises(ConfigError, match="either kubeconfig or server"):
        parse_config(document, "chit.yaml", tmp_path)
