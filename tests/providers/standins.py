"""Local stand-ins for the LLM providers' token exchange endpoints and one API call each,
written from the providers' own documentation (cited per class). Each trusts chit as an
OIDC issuer exactly as its provider is configured to: it fetches chit's discovery
document and JWKS (or holds an inline JWKS registered once), verifies the subject
token (signature, `kid`, `alg`, `iss`, `aud`, `exp`, `iat`), matches a rule on `sub`,
and answers API calls only with an access token it issued itself.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs

import httpx
import jwt

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
LEEWAY = 30


class Refusal(Exception):
    def __init__(self, status: int, error: str, description: str):
        super().__init__(f"{error}: {description}")
        self.status, self.error, self.description = status, error, description


@dataclass
class Trust:
    """An issuer registration on the provider's side: the issuer URL (exactly the tokens'
    `iss`), the audience, the keys (discovery, or an inline JWKS), the accepted
    algorithms, the longest `exp - iat`, and the rule on `sub`."""

    issuer: str
    audience: str
    subject_matches: Callable[[str], bool]
    algorithms: tuple[str, ...] = ("RS256",)
    max_lifetime: int = 3600
    inline_jwks: dict[str, Any] | None = None  # None: discovery
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetches: int = 0
    kids: list[str] = field(default_factory=list)  # of the tokens verified, in order

    def _fetch_keys(self) -> None:
        """OpenID Connect Discovery 1.0 §4: the document at ISSUER/.well-known/openid-configuration,
        whose `issuer` must be identical to the issuer it was fetched for, names the JWKS."""
        self.fetches += 1
        with httpx.Client(timeout=5, follow_redirects=False) as client:
            metadata = client.get(f"{self.issuer}/.well-known/openid-configuration").raise_for_status().json()
            if metadata.get("issuer") != self.issuer:
                raise Refusal(401, "invalid_grant", "the discovery document names another issuer")
            jwks = client.get(metadata["jwks_uri"]).raise_for_status().json()
        self.keys = {k["kid"]: k for k in jwks["keys"] if "kid" in k}

    def key_for(self, kid: str) -> dict[str, Any]:
        if self.inline_jwks is not None:
            keys = {k["kid"]: k for k in self.inline_jwks["keys"]}
            if kid not in keys:
                raise Refusal(401, "invalid_grant", "kid not in the registered JWKS")
            return keys[kid]
        if kid not in self.keys:
            self._fetch_keys()  # a key it has not seen: the issuer may have rotated
        if kid not in self.keys:
            raise Refusal(401, "invalid_grant", "kid not in the issuer's JWKS")
        return self.keys[kid]

    def verify(self, token: Any, now: float) -> dict[str, Any]:
        if not isinstance(token, str) or token.count(".") != 2:
            raise Refusal(400, "invalid_request", "the subject token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Refusal(400, "invalid_request", "the subject token is not a JWT") from None
        if header.get("alg") not in self.algorithms:
            raise Refusal(401, "invalid_grant", f"alg {header.get('alg')!r} is not supported")
        if not isinstance(header.get("kid"), str):
            raise Refusal(401, "invalid_grant", "kid missing")
        jwk = self.key_for(header["kid"])
        if jwk.get("alg", header["alg"]) != header["alg"]:
            raise Refusal(401, "invalid_grant", "the key is not for this alg")
        try:
            claims = jwt.decode(
                token, jwt.PyJWK(jwk).key, algorithms=[header["alg"]], audience=self.audience, issuer=self.issuer, leeway=LEEWAY,
                options={"require": ["iss", "aud", "sub", "exp", "iat"]},
            )
        except jwt.PyJWTError as error:
            raise Refusal(401, "invalid_grant", f"the subject token does not verify: {error}") from None
        if claims["iat"] > now + LEEWAY or claims["exp"] - claims["iat"] > self.max_lifetime:
            raise Refusal(401, "invalid_grant", "iat in the future or lifetime too long")
        if not self.subject_matches(claims["sub"]):
            raise Refusal(401, "invalid_grant", "no rule matches the subject")
        self.kids.append(header["kid"])
        return claims


class ProviderStandIn:
    """A JSON API on 127.0.0.1; subclasses answer `post(path, headers, body)`."""

    def __init__(self, trust: Trust, *, access_token_ttl: int = 600):
        self.trust = trust
        self.access_token_ttl = access_token_ttl
        self.issued: dict[str, dict[str, Any]] = {}  # access token -> the subject token's claims
        self.exchanges: list[dict[str, Any]] = []  # verified claims, in order
        self.refusals: list[Refusal] = []
        self.api_calls: list[str] = []  # the subject of each answered API call
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = stand_in.answer(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        raise NotImplementedError

    def exchange(self, subject_token: Any, prefix: str) -> dict[str, Any]:
        """Verify, then issue an access token of this provider's shape."""
        with self.lock:
            try:
                claims = self.verify(subject_token)
            except Refusal as refusal:
                self.refusals.append(refusal)
                raise
            access_token = prefix + secrets.token_urlsafe(24)
            self.issued[access_token] = claims
            self.exchanges.append(claims)
        return {"access_token": access_token, "token_type": "Bearer", "expires_in": self.access_token_ttl}

    def verify(self, subject_token: Any) -> dict[str, Any]:
        return self.trust.verify(subject_token, time.time())

    def caller(self, headers: dict[str, str]) -> dict[str, Any] | None:
        """The subject token's claims behind a bearer access token this stand-in issued; else None."""
        authorization = headers.get("authorization", "")
        claims = self.issued.get(authorization.removeprefix("Bearer ")) if authorization.startswith("Bearer ") else None
        if claims is not None:
            self.api_calls.append(claims["sub"])
        return claims

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def json_body(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    if headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise Refusal(400, "invalid_request", "the body must be JSON")
    try:
        value = json.loads(body)
    except ValueError:
        raise Refusal(400, "invalid_request", "the body is not JSON") from None
    if not isinstance(value, dict):
        raise Refusal(400, "invalid_request", "the body is not a JSON object")
    return value


def oauth_error(refusal: Refusal) -> tuple[int, dict[str, str]]:
    return refusal.status, {"error": refusal.error, "error_description": refusal.description}


class AnthropicStandIn(ProviderStandIn):
    """Anthropic's Workload Identity Federation: https://platform.claude.com/docs/en/manage-claude/wif-reference
    ("POST /v1/oauth/token accepts a JSON body using the RFC 7523 jwt-bearer grant": grant_type,
    assertion, federation_rule_id, organization_id, service_account_id, optional workspace_id;
    a standard RFC 6749 §5.1 response with an `sk-ant-oat01-` access token), the federation
    issuer's `check_jti` ("enforces JTI single-use (replay protection)") and
    `max_jwt_lifetime_seconds` ("Assertions must carry both `iat` and `exp`"), and the
    federation rule's `subject_prefix` ("Exact match unless the value ends with `*`").
    The Messages API call is https://platform.claude.com/docs/en/api/messages."""

    rule_id = "fdrl_01chit"
    organization_id = "00000000-0000-4000-8000-00000000c417"
    service_account_id = "svac_01chit"

    def __init__(self, trust: Trust, *, check_jti: bool = True, access_token_ttl: int = 600):
        super().__init__(trust, access_token_ttl=access_token_ttl)
        self.check_jti = check_jti
        self.seen_jtis: set[str] = set()

    def verify(self, subject_token: Any) -> dict[str, Any]:
        claims = super().verify(subject_token)
        jti = claims.get("jti")
        if self.check_jti and isinstance(jti, str):
            if jti in self.seen_jtis:
                raise Refusal(401, "invalid_grant", "the assertion's jti was already used")
            self.seen_jtis.add(jti)
        return claims

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        if path == "/v1/oauth/token":
            try:
                form = json_body(headers, body)
                if "oidc-federation-2026-04-01" not in headers.get("anthropic-beta", ""):
                    raise Refusal(400, "invalid_request", "the federation beta header is missing")
                if form.get("grant_type") != JWT_BEARER:
                    raise Refusal(400, "unsupported_grant_type", "only jwt-bearer")
                expected = (self.rule_id, self.organization_id, self.service_account_id)
                if (form.get("federation_rule_id"), form.get("organization_id"), form.get("service_account_id")) != expected:
                    raise Refusal(401, "invalid_grant", "unknown rule, organization or service account")
                answer = self.exchange(form.get("assertion"), "sk-ant-oat01-")
            except Refusal as refusal:
                return oauth_error(refusal)
            return 200, {**answer, "scope": "workspace:inference"}
        if path == "/v1/messages":
            if "x-api-key" in headers or self.caller(headers) is None:
                return 401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid bearer token"}}
            request = json.loads(body)
            return 200, {
                "id": "msg_" + secrets.token_hex(8), "type": "message", "role": "assistant", "model": request["model"],
                "content": [{"type": "text", "text": "hello from the stand-in"}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 5},
            }
        return 404, {"type": "error", "error": {"type": "not_found_error", "message": path}}


class OpenAIStandIn(ProviderStandIn):
    """OpenAI's workload identity token exchange: https://developers.openai.com/api/reference/workload-identity-federation
    (RFC 8693 at https://auth.openai.com/oauth/token, JSON body: grant_type token-exchange,
    subject_token_type jwt, subject_token, identity_provider_id, service_account_id; "The token
    must: Be a JWT with a kid and supported alg in the header. Include iss, aud, sub, exp, and
    iat claims. Match the configured Workload Identity Provider issuer and audience. Be signed by
    a key from the configured JWKS source."), a service account mapping on `sub`, and the
    Responses API call (https://platform.openai.com/docs/api-reference/responses/create)."""

    identity_provider_id = "wip_chit"
    service_account_id = "svcacct_chit"

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        if path == "/oauth/token":
            try:
                form = json_body(headers, body)
                if form.get("grant_type") != TOKEN_EXCHANGE or form.get("subject_token_type") != JWT_TOKEN_TYPE:
                    raise Refusal(400, "invalid_request", "token exchange of a jwt only")
                if (form.get("identity_provider_id"), form.get("service_account_id")) != (self.identity_provider_id, self.service_account_id):
                    raise Refusal(401, "invalid_grant", "unknown identity provider or service account")
                answer = self.exchange(form.get("subject_token"), "wif-")
            except Refusal as refusal:
                return oauth_error(refusal)
            return 200, {**answer, "issued_token_type": ACCESS_TOKEN_TYPE}
        if path == "/v1/responses":
            if self.caller(headers) is None:
                return 401, {"error": {"message": "invalid bearer token", "type": "invalid_request_error", "code": "invalid_api_key"}}
            request = json.loads(body)
            return 200, {
                "id": "resp_" + secrets.token_hex(8), "object": "response", "created_at": int(time.time()), "status": "completed",
                "model": request["model"], "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "hello from the stand-in", "annotations": []}]}],
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            }
        return 404, {"error": {"message": path, "type": "invalid_request_error"}}


class GoogleStandIn(ProviderStandIn):
    """Google Cloud's Security Token Service for a workload identity pool provider trusting chit
    (https://cloud.google.com/iam/docs/workload-identity-federation-with-other-providers: OIDC
    tokens signed RS256 or ES256, the provider's allowed audience, `google.subject=assertion.sub`
    of at most 127 bytes and an attribute condition), https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token
    (form-encoded RFC 8693 exchange, `audience` the provider's resource name), and Vertex AI's
    generateContent (https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/inference)."""

    provider = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/chit/providers/chit"
    cloud_platform = "https://www.googleapis.com/auth/cloud-platform"

    def verify(self, subject_token: Any) -> dict[str, Any]:
        claims = super().verify(subject_token)
        if len(claims["sub"].encode()) > 127:
            raise Refusal(400, "invalid_grant", "google.subject is longer than 127 bytes")
        return claims

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        if path == "/v1/token":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            try:
                if form.get("grant_type") != TOKEN_EXCHANGE or form.get("subject_token_type") not in (JWT_TOKEN_TYPE, "urn:ietf:params:oauth:token-type:id_token"):
                    raise Refusal(400, "invalid_request", "token exchange of a jwt only")
                if form.get("audience") != self.provider:
                    raise Refusal(400, "invalid_target", "unknown workload identity pool provider")
                if self.cloud_platform not in form.get("scope", "").split():
                    raise Refusal(400, "invalid_scope", "cloud-platform scope expected")
                answer = self.exchange(form.get("subject_token"), "ya29.chit-")
            except Refusal as refusal:
                return oauth_error(refusal)
            return 200, {**answer, "issued_token_type": ACCESS_TOKEN_TYPE}
        if path.endswith(":generateContent"):
            if self.caller(headers) is None:
                return 401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}
            return 200, {
                "candidates": [{"content": {"role": "model", "parts": [{"text": "hello from the stand-in"}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 5, "totalTokenCount": 8},
            }
        return 404, {"error": {"code": 404, "message": path, "status": "NOT_FOUND"}}
