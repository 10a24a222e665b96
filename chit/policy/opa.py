"""The OPA engine: `data.chit.decision` asked of an OPA server over its REST API.

chit POSTs `{"input": …}` to `{opa_url}/v1/data/chit/decision` (OPA's Data
API) and reads `result`. docs/reference/policy-contract.md "Decisions" fixes what each answer means:

- 200 with `result` → the raw decision (validated by `parse_decision`);
  200 without `result` → undefined → deny;
- 4xx, a malformed body → deny (the reason names the fault);
- 500 carrying OPA's evaluation-error body (`internal_error` with `eval_*`
  errors, e.g. `eval_conflict_error`) → deny, as the embedded engine denies
  the same policy;
- any other 5xx or 3xx, a connection failure, a timeout → 503.

Every request is bounded by `policy.timeout_ms` in total (connect, send,
OPA's evaluation, the response), never retried, and its response size capped.

Why httpx and not opa-python-client: the latter's `query_rule` calls
`raise_for_status()` before reading the body, so a 500 evaluation error (a
policy conflict: deny) cannot be told from a failing OPA (503); it also
retries 500/502/504 with back-off inside the caller's time budget.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from chit.bounded import BodyTooLarge, read_bounded
from chit.strictjson import strict_json
from chit.policy import PolicyEvaluationError, PolicyUnavailable, plain

DECISION_PATH = "chit/decision"
MAX_RESPONSE_BYTES = 1024 * 1024
# OPA's topdown errors (v1/topdown/errors.go); a cancelled evaluation is OPA giving up, not the policy failing.
_CANCELLED = "eval_cancel_error"
_NOT_JSON = object()  # a body that is not JSON: never a decision


def _evaluation_error(body: Any) -> str | None:
    """The message of an OPA evaluation-error body, or None if this 500 is something else."""
    if not isinstance(body, dict) or body.get("code") != "internal_error":
        return None
    errors = body.get("errors")
    if not isinstance(errors, list) or not errors:
        return None
    messages = []
    for error in errors:
        code = error.get("code") if isinstance(error, dict) else None
        if not isinstance(code, str) or not code.startswith("eval_") or code == _CANCELLED:
            return None
        messages.append(f"{code}: {error.get('message', '')}".strip())
    return "; ".join(messages)


class OpaEngine:
    """Asks an OPA server; one pooled HTTP client per worker process."""

    name = "opa"

    def __init__(self, url: str, timeout: float):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment between chit and its policy
            headers={"Accept": "application/json", "User-Agent": "chit"},
        )

    async def _send(self, method: str, path: str, document: Any = None) -> tuple[int, Any]:
        """Status and parsed JSON body; PolicyUnavailable when OPA cannot answer in time."""
        url = f"{self.url}{path}"
        content = None if document is None else json.dumps(document, separators=(",", ":")).encode()
        headers = None if content is None else {"Content-Type": "application/json"}
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client.stream(method, url, content=content, headers=headers) as response:
                    body = await read_bounded(response.aiter_bytes(), MAX_RESPONSE_BYTES, "OPA's answer")
                    status = response.status_code
        except BodyTooLarge as error:
            raise PolicyEvaluationError(str(error)) from None
        except TimeoutError:
            raise PolicyUnavailable(f"OPA did not answer within {self.timeout * 1000:.0f} ms") from None
        except httpx.HTTPError as error:
            raise PolicyUnavailable(f"OPA at {self.url} unreachable: {type(error).__name__}") from None
        try:
            # Strictly: a duplicate key would otherwise let its last value win unnoticed.
            return status, strict_json(body.decode("utf-8")) if body else None
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return status, _NOT_JSON

    async def query(self, path: str, policy_input: dict[str, Any] | None = None) -> Any:
        """The value of `data.<path>` (slash-separated), None when undefined.

        Raises PolicyEvaluationError (deny) or PolicyUnavailable (503).
        """
        document = {} if policy_input is None else {"input": plain(policy_input)}
        status, body = await self._send("POST", f"/v1/data/{path}", document)
        if status == 200:
            if not isinstance(body, dict):
                raise PolicyEvaluationError("OPA answered 200 with a body that is not a strictly valid JSON object")
            return body.get("result")
        if 400 <= status < 500:
            detail = f"{body.get('code')}: {body.get('message')}" if isinstance(body, dict) else "no error body"
            raise PolicyEvaluationError(f"OPA refused the query (HTTP {status}, {detail})")
        if status == 500:
            message = _evaluation_error(body)
            if message is not None:
                raise PolicyEvaluationError(f"OPA evaluation error: {message}")
        raise PolicyUnavailable(f"OPA answered HTTP {status}")

    async def decide(self, policy_input: dict[str, Any]) -> Any:
        return await self.query(DECISION_PATH, policy_input)

    async def policies(self) -> list[dict[str, Any]]:
        """The modules OPA has loaded (`GET /v1/policies`): `id` and `raw` source each."""
        status, body = await self._send("GET", "/v1/policies")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("result"), list):
            raise PolicyUnavailable(f"OPA did not list its policies (HTTP {status})")
        return [p for p in body["result"] if isinstance(p, dict)]

    async def ready(self) -> bool:
        return await self.unready_reason() is None

    async def unready_reason(self) -> str | None:
        """OPA's own health check: 200 once its server is up and its bundles are activated."""
        try:
            status, _ = await self._send("GET", "/health?bundles")
        except (PolicyUnavailable, PolicyEvaluationError) as error:
            return str(error)
        return None if status == 200 else f"OPA at {self.url}: /health?bundles answered HTTP {status}"

    async def close(self) -> None:
        await self._client.aclose()
