"""The Kubernetes API checks of one cluster: TokenReview and the pod lookup.

docs/operators/kubernetes.md "Kubernetes API checks": `token_review` sends `spec.audiences` =
the cluster's audiences and requires `status.authenticated`, a non-empty
intersection of `status.audiences` with them, `status.user.username` = the
token's `sub`, and pod name/uid in `status.user.extra` equal to the token's;
`pod_lookup` requires the pod to exist with the token's UID and phase
Running. Absent extras count as a mismatch. Any mismatch → 400
(`InvalidEvidence`); API unreachable, erroring or slow → 503
(`EvidenceUnavailable`).

The official `kubernetes` client is synchronous: each call runs in this
cluster's own small thread pool, bounded by `api.timeout_ms` (connect and
read, and in total), never retried.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.config.kube_config import load_kube_config

from chit.attestors.base import ContainerImage, EvidenceUnavailable, InvalidEvidence
from chit.attestors.kubernetes.config import Cluster
from chit.urls import require_safe_url

# Where Kubernetes mounts a pod's own API credentials (chit's, when it runs in the cluster).
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
IN_CLUSTER_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
TOKEN_REREAD_SECONDS = 60.0  # the kubelet rotates projected tokens; re-read the file this often
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
# A container's imageID names the manifest the runtime pulled: "[scheme://]repository@sha256:<hex>".
_REPO_DIGEST = re.compile(r"^(?:[a-z-]+://)?([^@\s]+)@(sha256:[0-9a-f]{64})$")
THREADS = 8

T = TypeVar("T")


class _BearerTokenFile:
    """`refresh_api_key_hook`: chit's API credential from a file, re-read once a minute."""

    def __init__(self, path: Path):
        self.path = path
        self._read_at = float("-inf")

    def __call__(self, configuration: client.Configuration) -> None:
        now = time.monotonic()
        if now - self._read_at < TOKEN_REREAD_SECONDS:
            return
        token = self.path.read_text(encoding="utf-8").strip()
        if not token:
            raise OSError(f"{self.path} is empty")
        configuration.api_key["BearerToken"] = f"Bearer {token}"
        self._read_at = now


def api_configuration(cluster: Cluster) -> client.Configuration:
    """The client configuration: `api.kubeconfig`, or `api.server/ca_file/token_file` with
    in-cluster defaults for null."""
    api = cluster.api
    configuration = client.Configuration()
    if api.kubeconfig is not None:
        try:
            load_kube_config(config_file=str(api.kubeconfig), client_configuration=configuration, persist_config=False)
        except (ConfigException, OSError, ValueError) as error:
            raise ValueError(f"cluster {cluster.name}: api.kubeconfig {api.kubeconfig} cannot be used: {error}") from None
        try:
            require_safe_url(configuration.host or "", "the server of api.kubeconfig")
        except ValueError as error:
            raise ValueError(f"cluster {cluster.name}: {error}") from None
    elif api.server is None:
        try:
            InClusterConfigLoader(str(api.token_file or IN_CLUSTER_TOKEN), str(api.ca_file or IN_CLUSTER_CA)).load_and_set(configuration)
        except ConfigException as error:
            raise ValueError(
                f"cluster {cluster.name}: api.server is not set and chit does not run in a Kubernetes pod ({error})"
            ) from None
    else:
        configuration.host = api.server.rstrip("/")
        ca_file = api.ca_file or (IN_CLUSTER_CA if IN_CLUSTER_CA.is_file() else None)
        configuration.ssl_ca_cert = None if ca_file is None else str(ca_file)
        configuration.refresh_api_key_hook = _BearerTokenFile(api.token_file or IN_CLUSTER_TOKEN)
        configuration.api_key["BearerToken"] = ""  # the client calls the hook only for a key it has
    configuration.retries = False  # one attempt inside the time budget; failures fail closed
    configuration.connection_pool_maxsize = THREADS
    configuration.proxy = None
    return configuration


def _api_error(cluster: str, what: str, error: BaseException) -> EvidenceUnavailable:
    if isinstance(error, ApiException):
        return EvidenceUnavailable(f"cluster {cluster}: {what}: the API answered HTTP {error.status}")
    return EvidenceUnavailable(f"cluster {cluster}: {what}: {type(error).__name__}")


class ClusterApi:
    """One cluster's API server, for the checks the cluster enables."""

    def __init__(self, cluster: Cluster):
        self.name = cluster.name
        self.audiences = list(cluster.audiences)
        self.timeout = cluster.api.timeout_ms / 1000
        self._client = client.ApiClient(api_configuration(cluster))
        self._authentication = client.AuthenticationV1Api(self._client)
        self._authorization = client.AuthorizationV1Api(self._client)
        self._core = client.CoreV1Api(self._client)
        self._threads = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix=f"k8s-{cluster.name}")

    async def _call(self, what: str, call: Callable[..., T], *args: Any, not_found: str | None = None) -> T:
        """Run a client call in the pool: (connect, read) timeouts inside, the total bounded outside.

        A 404 is `not_found` (InvalidEvidence) when given; every other failure is EvidenceUnavailable.
        """
        loop = asyncio.get_running_loop()
        # The pool's threads run in a copy of this context (as asyncio.to_thread does): the
        # exchange's decision_id and trace follow the call into the client's thread.
        context = contextvars.copy_context()
        future = loop.run_in_executor(self._threads, context.run, lambda: call(*args, _request_timeout=(self.timeout, self.timeout)))
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            raise EvidenceUnavailable(f"cluster {self.name}: {what}: no answer within {self.timeout:.1f} s") from None
        except ApiException as error:
            if error.status == 404 and not_found is not None:
                raise InvalidEvidence(not_found) from None
            raise _api_error(self.name, what, error) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
            # ValueError: the pydantic models refusing what the API sent.
            raise _api_error(self.name, what, error) from None

    async def review(self, token: str, *, subject: str, pod_name: str, pod_uid: str) -> None:
        """TokenReview the subject token; InvalidEvidence unless the cluster vouches for exactly this pod."""
        body = client.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=client.V1TokenReviewSpec(token=token, audiences=self.audiences),
        )
        review = await self._call("TokenReview", self._authentication.create_token_review, body)
        status = review.status
        if status is None or status.authenticated is not True:
            raise InvalidEvidence("the cluster does not authenticate the token (TokenReview)")
        if not set(status.audiences or ()).intersection(self.audiences):
            raise InvalidEvidence("TokenReview: no accepted audience")
        user = status.user
        if user is None or user.username != subject:
            raise InvalidEvidence("TokenReview: the user is not the token's subject")
        extra = user.extra or {}
        if extra.get(POD_NAME_EXTRA) != [pod_name] or extra.get(POD_UID_EXTRA) != [pod_uid]:
            raise InvalidEvidence("TokenReview: the pod is not the token's")

    async def pod_images(self, namespace: str, pod_name: str, pod_uid: str, service_account: str) -> tuple[ContainerImage, ...]:
        """GET the pod: it must be the token's (same UID and service account) and Running.

        Returns every container's image (init, app and ephemeral containers):
        the repository@digest the runtime reports, or the spec's reference
        without a digest when the runtime reports none.
        """
        pod = await self._call(
            "pod lookup", self._core.read_namespaced_pod, pod_name, namespace, not_found="the token's pod does not exist"
        )
        if pod.metadata is None or pod.metadata.uid != pod_uid:
            raise InvalidEvidence("the pod's UID is not the token's (the pod was replaced)")
        if pod.spec is None or pod.spec.service_account_name != service_account:
            raise InvalidEvidence("the pod runs as another service account")
        if pod.status is None or pod.status.phase != "Running":
            raise InvalidEvidence("the token's pod is not running")
        statuses = {
            s.name: s
            for s in (pod.status.init_container_statuses or [])
            + (pod.status.container_statuses or [])
            + (pod.status.ephemeral_container_statuses or [])
        }
        containers = (pod.spec.init_containers or []) + (pod.spec.containers or []) + (pod.spec.ephemeral_containers or [])
        images = []
        for container in containers:
            status = statuses.get(container.name)
            match = _REPO_DIGEST.match(status.image_id or "") if status is not None else None
            if match:
                images.append(ContainerImage(f"{match.group(1)}@{match.group(2)}", match.group(2)))
            else:
                images.append(ContainerImage(container.image or "", None))
        return tuple(images)

    async def allowed(self, verb: str, resource: str, group: str = "") -> bool:
        """May chit's own credential `verb` `resource` in every namespace? A
        SelfSubjectAccessReview, which every authenticated user may create (`chit doctor`)."""
        attributes = client.V1ResourceAttributes(verb=verb, resource=resource, group=group)
        body = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes))
        review = await self._call("SelfSubjectAccessReview", self._authorization.create_self_subject_access_review, body)
        return review.status is not None and review.status.allowed is True

    async def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._client.close()
