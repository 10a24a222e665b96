"""`verify_instance`: the Compute Engine API's instances.get, with chit's Application Default Credentials."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
from typing import Any, Mapping

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests

from chit.attestors.base import EvidenceUnavailable, InvalidEvidence
from chit.attestors.gcp.config import GcpSettings
from chit.attestors.jwks import DocumentNotFound, fetch_json_response, http_client

log = logging.getLogger("chit.gcp")
COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute.readonly"
# instances.get `status`: an instance that is (about to be) running; STOPPING,
# STOPPED, SUSPENDING, SUSPENDED, REPAIRING and TERMINATED are not.
_LIVE_STATUSES = frozenset({"PROVISIONING", "STAGING", "RUNNING"})
_STATUS = re.compile(r"[A-Z_]{1,32}")


class _BoundedRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport with every request bounded in time
    (its own default waits up to 120 s)."""

    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
        bounded = self.timeout if timeout is None else min(float(timeout), self.timeout)
        return super().__call__(url, method=method, body=body, headers=headers, timeout=bounded, **kwargs)


class ComputeEngine:
    """instances.get of the Compute Engine API
    (`GET {endpoint}/compute/v1/projects/P/zones/Z/instances/ID`, which takes the
    numeric id in place of the name), authorized with chit's Application Default
    Credentials: the metadata server's on GCE/GKE, or the file
    GOOGLE_APPLICATION_CREDENTIALS names. google-auth obtains and refreshes the
    access token (blocking: in a worker thread, one refresh at a time) and keeps
    it until shortly before it expires."""

    def __init__(self, endpoint: str, timeout: float, credentials: google.auth.credentials.Credentials):
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.credentials = credentials
        self._transport = _BoundedRequest(timeout)
        self._client = http_client(timeout=timeout)
        self._refreshing: asyncio.Future[None] | None = None

    @classmethod
    def with_default_credentials(cls, config: GcpSettings) -> ComputeEngine:
        """Application Default Credentials, or ValueError (chit does not start) if there are none."""
        try:
            credentials, _ = google.auth.default(scopes=[COMPUTE_SCOPE])
        except google.auth.exceptions.GoogleAuthError as error:
            raise ValueError(
                "attestors.gcp.verify_instance needs Google Application Default Credentials to call the Compute "
                "Engine API (run on GCE/GKE with a service account, or set GOOGLE_APPLICATION_CREDENTIALS to a "
                f"credentials file): {error}"
            ) from None
        return cls(config.compute_endpoint, config.compute_timeout_ms / 1000, credentials)

    def _refreshed(self, task: asyncio.Future[None]) -> None:
        self._refreshing = None
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.warning("Google credentials could not be refreshed: %s", error)

    async def authorization(self) -> dict[str, str]:
        """The request headers that carry a current access token."""
        if not self.credentials.valid:
            if self._refreshing is None:
                self._refreshing = asyncio.ensure_future(asyncio.to_thread(self.credentials.refresh, self._transport))
                self._refreshing.add_done_callback(self._refreshed)
            try:
                # Shielded: an exchange that gives up leaves the one refresh running for the next.
                await asyncio.wait_for(asyncio.shield(self._refreshing), self.timeout)
            except TimeoutError:
                raise EvidenceUnavailable("Google credentials: no access token in time") from None
            except (google.auth.exceptions.GoogleAuthError, ValueError, OSError) as error:
                # The token endpoint's own words go to the log (_refreshed), not to the caller.
                raise EvidenceUnavailable(f"Google credentials cannot be refreshed ({type(error).__name__})") from None
        headers: dict[str, str] = {}
        self.credentials.apply(headers)
        return headers

    async def instance(self, project_id: str, zone: str, instance_id: str) -> Mapping[str, Any]:
        """The instance resource; InvalidEvidence if there is none (404), else
        EvidenceUnavailable for any answer that is not a JSON object (401, 403, 429,
        5xx, timeout, oversized). The URL's parts are names compute_engine_facts has
        checked against Google's patterns: nothing in them can change the path."""
        url = f"{self.endpoint}/compute/v1/projects/{project_id}/zones/{zone}/instances/{instance_id}"
        headers = await self.authorization()
        try:
            document, _ = await fetch_json_response(self._client, url, headers)
        except DocumentNotFound:
            raise InvalidEvidence("instance not found") from None
        if not isinstance(document, dict):
            raise EvidenceUnavailable(f"{url} did not answer with an instance")
        return document

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        await self._client.aclose()


def _last_segment(value: Any) -> str | None:
    """`…/machineTypes/e2-medium` → `e2-medium` (the API names resources by URL)."""
    if not isinstance(value, str):
        return None
    return value.rstrip("/").rsplit("/", 1)[-1] or None


def _creation_time(value: Any) -> int | None:
    """RFC 3339 (`2026-11-20T20:40:00.123-08:00`) to whole unix seconds, as the token has it."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return int(moment.timestamp() // 1)


def instance_facts(instance: Mapping[str, Any], facts: Mapping[str, Any]) -> dict[str, Any]:
    """The facts instances.get adds, once it agrees with the verified token."""
    if instance.get("id") != facts["instance_id"]:
        raise InvalidEvidence("the instance found has another id")
    if instance.get("name") != facts["instance_name"]:
        raise InvalidEvidence("the instance has another name than the token says")
    if _creation_time(instance.get("creationTimestamp")) != facts["instance_creation_timestamp"]:
        # To the second (the token's is in whole seconds): the token's VM, not one made since under its name.
        raise InvalidEvidence("the instance was created at another time than the token says")
    status = instance.get("status")
    if status not in _LIVE_STATUSES:
        shown = status if isinstance(status, str) and _STATUS.fullmatch(status) else "in an unknown state"
        raise InvalidEvidence(f"the instance is {shown}, not provisioning, staging or running")
    labels = instance.get("labels", {})
    interfaces = instance.get("networkInterfaces")
    first = interfaces[0] if isinstance(interfaces, list) and interfaces and isinstance(interfaces[0], dict) else {}
    accounts = instance.get("serviceAccounts")
    extra: dict[str, Any] = {
        "status": status,
        "labels": {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(labels, dict) else {},
        "service_accounts": [
            a["email"] for a in accounts if isinstance(a, dict) and isinstance(a.get("email"), str)
        ] if isinstance(accounts, list) else [],
    }
    for fact, value in (
        ("machine_type", instance.get("machineType")),
        ("network", first.get("network")),
        ("subnetwork", first.get("subnetwork")),
    ):
        segment = _last_segment(value)
        if segment is not None:
            extra[fact] = segment
    return extra
