"""Subject tokens for LLM providers' SDKs where no sidecar file can serve
(docs/providers/overview.md "Without a sidecar").

`ChitTokenSource` is a callable that collects this workload's evidence, exchanges
it at chit for a JWT with the provider's audience and returns that JWT: a fresh
token, with a `jti` never presented before, at every call. Each SDK asks for a
subject token only when it exchanges it for its own access token, so one chit
exchange happens per provider exchange:

- anthropic: `WorkloadIdentityCredentials(identity_token_provider=source, …)`
  as the client's `credentials=` (the SDK calls the provider at each exchange);
- openai: `workload_identity={…, "provider": openai_subject_token_provider(source)}`
  (`get_token` is called at each exchange);
- google-auth: `identity_pool.Credentials(…, subject_token_supplier=source)`
  (`get_subject_token(context, request)` at each refresh).

Standard library only, like the rest of the agent; the SDKs are the caller's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from chit.agent.collect import CollectorSettings, build_collector
from chit.agent.exchange import REQUEST_TIMEOUT, ExchangeRequest, TokenEndpoint
from chit.attestors.base import Collector
from chit.attestors.kubernetes.collector import DEFAULT_TOKEN_FILE
from chit.protocol import TOKEN_TYPE_JWT
from chit.urls import require_safe_url


class ChitTokenSource:
    """A new chit JWT for `audience` at each call; raises `ExchangeError`, `PlatformAbsent`
    or `CollectionFailed` (chit.agent.exchange, chit.attestors.base) when none can be had,
    which the SDKs report as a failed token exchange."""

    def __init__(
        self,
        server: str,
        audience: str,
        *,
        scope: tuple[str, ...] = (),
        platform: str = "auto",
        subject_token_file: Path = DEFAULT_TOKEN_FILE,
        in_kubernetes_pod: bool = False,
        ca_file: Path | None = None,
        timeout: float = REQUEST_TIMEOUT,
        collector: Collector | None = None,
    ):
        # The subject token crosses the network only encrypted (http:// on loopback only): ValueError otherwise.
        self.endpoint = TokenEndpoint(require_safe_url(server, "server"), timeout=timeout, ca_file=ca_file)
        self.request = ExchangeRequest(audience=(audience,), scope=scope, requested_token_type=TOKEN_TYPE_JWT)
        settings = CollectorSettings(subject_token_file=Path(subject_token_file), gcp_audience=server, in_kubernetes_pod=in_kubernetes_pod)
        self.collector = collector or build_collector(platform, settings)

    def __call__(self) -> str:
        return self.endpoint.exchange(self.collector.collect(), self.request).access_token

    def get_subject_token(self, context: Any, request: Any) -> str:
        """google-auth's `identity_pool.SubjectTokenSupplier` interface."""
        return self()


def openai_subject_token_provider(source: Callable[[], str]) -> dict[str, Any]:
    """The `provider` entry of the openai SDK's `workload_identity`: a JWT subject token."""
    return {"token_type": "jwt", "get_token": source}
