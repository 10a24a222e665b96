"""Small factories for chit's tests: a cluster issuer with its own keys, a local
HTTP server standing in for its JWKS endpoint, and a real `chit serve` process.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ROOT = Path(__file__).resolve().parents[1]
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any] | str, claims: dict[str, Any] | str, signature: bytes = b"sig") -> str:
    """A JWS-shaped string with arbitrary (unsigned) parts, for malformed-token tests."""
    encode = lambda part: b64url(part.encode() if isinstance(part, str) else json.dumps(part).encode())  # noqa: E731
    return f"{encode(header)}.{encode(claims)}.{b64url(signature)}"


# --- assertions on /token responses --------------------------------------------------


def assert_refused(response: httpx.Response, status: int = 400, error: str = "invalid_request") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert "access_token" not in body
    assert response.headers["cache-control"] == "no-store"
    assert body["decision_id"]
    return body


def assert_issued(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["access_token"] and body["token_type"] == "Bearer"
    return body


# --- a cluster issuer ---------------------------------------------------------------


@dataclass
class ClusterIssuer:
    """A Kubernetes service-account issuer: a key pair and projected-token claims."""

    name: str
    issuer: str
    algorithm: str = "RS256"
    audiences: list[str] = field(default_factory=lambda: ["chit"])

    def __post_init__(self) -> None:
        if self.algorithm == "RS256":
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        else:
            self.private_key = ec.generate_private_key(ec.SECP256R1())
            jwk = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        self.kid = f"{self.name}-{uuid.uuid4().hex[:8]}"
        jwk.update(kid=self.kid, alg=self.algorithm, use="sig")
        self.jwk = jwk

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def claims(self, namespace: str = "payments", service_account: str = "agent", **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": list(self.audiences),
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": str(uuid.uuid4())},
                "pod": {"name": f"{service_account}-7d9f8", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
                "warnafter": now + 3000,
            },
        }
        for key, value in overrides.items():
            if value is DROP:
                claims.pop(key, None)
            else:
                claims[key] = value
        return claims

    def token(
        self,
        namespace: str = "payments",
        service_account: str = "agent",
        *,
        headers: dict[str, Any] | None = None,
        key: Any = None,
        algorithm: str | None = None,
        **overrides: Any,
    ) -> str:
        header = {"kid": self.kid, **(headers or {})}
        return jwt.encode(
            self.claims(namespace, service_account, **overrides),
            key if key is not None else self.private_key,
            algorithm=algorithm or self.algorithm,
            headers=header,
        )


DROP = object()  # a claim override that removes the claim


def sign_jws(claims: dict[str, Any], key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, algorithm: str, kid: str) -> str:
    """A compact JWS with header alg `algorithm` (RS256 or ES256, SHA-256 either way),
    signed by `key` whatever it is: PyJWT refuses some keys (ES256 on P-384) that a
    test must still be able to sign with, to show chit refuses them too."""
    header = {"alg": algorithm, "kid": kid, "typ": "JWT"}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}".encode()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        size = (key.curve.key_size + 7) // 8
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return f"{signing_input.decode()}.{b64url(signature)}"


@dataclass
class WeakKey:
    """A key no JWKS may make chit verify with (RFC 7518 §3.3/§3.4, RFC 7517 §4.4):
    the private key, the algorithm a token signed by it claims, and its JWK."""

    kid: str
    private_key: Any
    algorithm: str
    jwk: dict[str, Any]

    def token(self, claims: dict[str, Any]) -> str:
        return sign_jws(claims, self.private_key, self.algorithm, self.kid)


# Keys no JWKS may make chit verify with, by name: (a new private key, the
# algorithm tokens signed by it claim, the alg its JWK states).
WEAK_KEY_KINDS: dict[str, tuple[Callable[[], Any], str, str]] = {
    # RSA-2048 with public exponent 3 (cryptography still generates it).
    "rsa-e3": (lambda: rsa.generate_private_key(public_exponent=3, key_size=2048), "RS256", "RS256"),
    "rsa-1024": (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "RS256", "RS256"),
    # crv P-384 under alg ES256: not the curve the algorithm names.
    "p384-labelled-es256": (lambda: ec.generate_private_key(ec.SECP384R1()), "ES256", "ES256"),
    # Strong keys whose alg contradicts them.
    "rsa-labelled-es256": (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", "ES256"),
    "p256-labelled-es384": (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256", "ES384"),
}


def weak_keys(prefix: str) -> dict[str, WeakKey]:
    """One WeakKey of each of WEAK_KEY_KINDS, by name; kids are `prefix-name`."""
    found = {}
    for name, (generate, algorithm, label) in WEAK_KEY_KINDS.items():
        key = generate()
        encoder = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
        jwk = encoder.to_jwk(key.public_key(), as_dict=True)
        kid = f"{prefix}-{name}"
        jwk.update(kid=kid, alg=label, use="sig")
        found[name] = WeakKey(kid, key, algorithm, jwk)
    return found


# --- Google's token service -------------------------------------------------------

GOOGLE_ISSUER = "https://accounts.google.com"


def self_signed_certificate(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, common_name: str) -> str:
    """A PEM X.509 certificate for `private_key`, like those Google publishes for its keys."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=14))
        .sign(private_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class GoogleSigner:
    """A stand-in for Google's identity token signer: RSA keys whose certificates
    it publishes in Google's v1 format (`{kid: PEM}`), and Compute Engine identity
    tokens shaped like the metadata server's (`format=full` or `standard`)."""

    audience: str
    project_id: str = "payments-prod"
    email: str = "agent@payments-prod.iam.gserviceaccount.com"

    def __post_init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.certificates: dict[str, str] = {}
        self.kid = self.add_key()

    def add_key(self, public_exponent: int = 65537) -> str:
        """A new published key (Google rotates keys this way); returns its kid."""
        kid = uuid.uuid4().hex
        self.keys[kid] = rsa.generate_private_key(public_exponent=public_exponent, key_size=2048)
        self.certificates[kid] = self_signed_certificate(self.keys[kid], "securetoken.system.gserviceaccount.com")
        return kid

    def certs(self) -> dict[str, str]:
        return dict(self.certificates)

    def instance(self, **overrides: Any) -> dict[str, Any]:
        instance: dict[str, Any] = {
            "instance_creation_timestamp": 1763700000,
            "instance_id": "4520031799277581759",
            "instance_name": "agent-vm-1",
            "project_id": self.project_id,
            "project_number": 733428162846,
            "zone": "europe-west1-b",
        }
        return _apply(instance, overrides)

    def claims(self, format: str = "full", instance: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": self.audience,
            "azp": "104318925392713268142",
            "exp": now + 3600,
            "iat": now,
            "iss": GOOGLE_ISSUER,
            "sub": "104318925392713268142",
        }
        if format == "full":
            claims.update(email=self.email, email_verified=True, google={"compute_engine": self.instance(**(instance or {}))})
        elif format == "standard":
            # A Google ID token of the service account without instance claims (as
            # generateIdToken issues them); the metadata server's own format=standard
            # also leaves out the email, and chit refuses it.
            claims.update(email=self.email, email_verified=True)
        return _apply(claims, overrides)

    def token(
        self,
        format: str = "full",
        *,
        instance: dict[str, Any] | None = None,
        kid: str | None = None,
        key: Any = None,
        algorithm: str = "RS256",
        headers: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        kid = kid or self.kid
        return jwt.encode(
            self.claims(format, instance, **overrides),
            key if key is not None else self.keys.get(kid, self.keys[self.kid]),
            algorithm=algorithm,
            headers={"kid": kid, "typ": "JWT", **(headers or {})},
        )


def _apply(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if value is DROP:
            values.pop(key, None)
        else:
            values[key] = value
    return values


# --- a local HTTP server for key material -----------------------------------------


class DocumentServer:
    """Serves JSON documents on 127.0.0.1 and counts requests per path.

    `failures[path] = status` makes a path answer that status, `delays[path]`
    makes it slow, `headers[path]` adds response headers (e.g. Cache-Control),
    `redirects[path] = url` answers 302 to `url`; `stop()` closes the socket.
    `request_headers[path]` lists the headers of each request, in order.
    """

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.hits: dict[str, int] = {}
        self.request_headers: dict[str, list[dict[str, str]]] = {}
        self.failures: dict[str, int] = {}
        self.delays: dict[str, float] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.redirects: dict[str, str] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                server.request_headers.setdefault(self.path, []).append({k.lower(): v for k, v in self.headers.items()})
                if self.path in server.delays:
                    time.sleep(server.delays[self.path])
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = server.failures.get(self.path)
                document = server.documents.get(self.path)
                if status is None and document is None:
                    status = 404
                if status is not None:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = document() if callable(document) else document
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in server.headers.get(self.path, {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, document: Any | Callable[[], Any]) -> str:
        self.documents[path] = document
        return self.url(path)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- Google Cloud APIs: the OAuth token endpoint and Compute Engine's instances.get ---------

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
COMPUTE_SCOPES = frozenset({"https://www.googleapis.com/auth/compute.readonly", "https://www.googleapis.com/auth/compute",
                            "https://www.googleapis.com/auth/cloud-platform"})


class GoogleServiceAccount:
    """A service account with a (test) key, and its key file as the Cloud console
    downloads it: what GOOGLE_APPLICATION_CREDENTIALS names for chit's ADC."""

    def __init__(self, email: str, token_uri: str):
        self.email = email
        self.token_uri = token_uri
        self.key_id = uuid.uuid4().hex
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def key_file(self, path: Path) -> Path:
        pem = self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        project_id = self.email.split("@", 1)[1].split(".", 1)[0]
        path.write_text(json.dumps({
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": self.key_id,
            "private_key": pem.decode(),
            "client_email": self.email,
            "client_id": "104318925392713268143",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{self.email}",
            "universe_domain": "googleapis.com",
        }))
        path.chmod(0o600)
        return path


def _google_error(code: int, status: str, message: str, reason: str) -> dict[str, Any]:
    """Google APIs' error body (https://cloud.google.com/apis/design/errors)."""
    return {"error": {"code": code, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}], "status": status}}


class _JsonApi(DocumentServer):
    """A DocumentServer whose handler `answer`s each request (method, path, headers, body)
    with a status and a JSON document; `hits`, `failures` and `delays` work per path,
    `raw[path]` answers 200 with those bytes instead."""

    def __init__(self) -> None:
        self.raw: dict[str, bytes] = {}
        super().__init__()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def handle_api(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.hits[self.path] = api.hits.get(self.path, 0) + 1
                if self.path in api.delays:
                    time.sleep(api.delays[self.path])
                if self.path in api.failures:
                    status = api.failures[self.path]
                    self.send(status, json.dumps(_google_error(status, "UNAVAILABLE", "stand-in failure", "backendError")).encode())
                    return
                if self.path in api.raw:
                    self.send(200, api.raw[self.path])
                    return
                status, document = api.answer(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                self.send(status, json.dumps(document).encode())

            def send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = handle_api  # noqa: N815

        self.httpd.RequestHandlerClass = Handler

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        raise NotImplementedError


class GoogleTokenEndpoint(_JsonApi):
    """Google's OAuth 2.0 token endpoint (oauth2.googleapis.com/token) for service
    accounts: the JWT bearer grant (RFC 7523) whose assertion must verify (RS256)
    with a registered account's public key under its `kid`, `iss` the account,
    `aud` Google's token endpoint (google-auth addresses it there whatever the key
    file's `token_uri`), unexpired, with a `scope`. It answers an access token for an
    hour, as Google does; anything else is 400 `invalid_grant`."""

    PATH = "/token"
    AUDIENCE = "https://oauth2.googleapis.com/token"

    def __init__(self) -> None:
        self.accounts: dict[str, GoogleServiceAccount] = {}
        self.tokens: dict[str, tuple[str, frozenset[str]]] = {}  # access token -> (email, scopes)
        super().__init__()
        self.token_uri = self.url(self.PATH)

    def account(self, email: str) -> GoogleServiceAccount:
        """A new account with a key this endpoint knows."""
        account = GoogleServiceAccount(email, self.token_uri)
        self.accounts[email] = account
        return account

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        from urllib.parse import parse_qs

        def refused(description: str) -> tuple[int, Any]:
            return 400, {"error": "invalid_grant", "error_description": description}

        if method != "POST" or path != self.PATH:
            return 404, _google_error(404, "NOT_FOUND", "Not Found", "notFound")
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != JWT_BEARER_GRANT or "assertion" not in form:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}
        try:
            header = jwt.get_unverified_header(form["assertion"])
            issuer = jwt.decode(form["assertion"], options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return refused("Invalid JWT.")
        account = self.accounts.get(issuer)
        if account is None or header.get("kid") != account.key_id:
            return refused("Invalid JWT Signature.")
        try:
            claims = jwt.decode(form["assertion"], account.private_key.public_key(), algorithms=["RS256"],
                                audience=self.AUDIENCE, issuer=account.email, options={"require": ["exp", "iat"]})
        except jwt.PyJWTError:
            return refused("Invalid JWT Signature.")
        scopes = frozenset(str(claims.get("scope", "")).split())
        if not scopes:
            return refused("Invalid OAuth scope or ID token audience provided.")
        token = "ya29.c." + b64url(os.urandom(48))
        self.tokens[token] = (account.email, scopes)
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}


def compute_instance(engine: dict[str, Any], email: str, *, status: str = "RUNNING", labels: dict[str, str] | None = None, **overrides: Any) -> dict[str, Any]:
    """A Compute Engine instance resource (instances.get, compute/v1) for the instance
    a token's `google.compute_engine` claims name, in the API's JSON shape: resources
    named by URL, the id as a string, the creation time in RFC 3339 with
    milliseconds and a Pacific-time offset."""
    project, zone, name = engine["project_id"], engine["zone"], engine["instance_name"]
    region = zone.rsplit("-", 1)[0]
    base = f"https://www.googleapis.com/compute/v1/projects/{project}"
    pacific = datetime.timezone(datetime.timedelta(hours=-8))
    created = datetime.datetime.fromtimestamp(engine["instance_creation_timestamp"] + 0.417, pacific).isoformat(timespec="milliseconds")
    instance: dict[str, Any] = {
        "kind": "compute#instance",
        "id": engine["instance_id"],
        "creationTimestamp": created,
        "name": name,
        "tags": {"fingerprint": "42WmSpB8rSM="},
        "machineType": f"{base}/zones/{zone}/machineTypes/e2-medium",
        "status": status,
        "zone": f"{base}/zones/{zone}",
        "canIpForward": False,
        "networkInterfaces": [{
            "kind": "compute#networkInterface",
            "network": f"{base}/global/networks/payments-vpc",
            "subnetwork": f"{base}/regions/{region}/subnetworks/agents",
            "networkIP": "10.132.0.7",
            "name": "nic0",
            "fingerprint": "Qz6m4hM1n4k=",
            "stackType": "IPV4_ONLY",
        }, {
            "kind": "compute#networkInterface",
            "network": f"{base}/global/networks/management",
            "subnetwork": f"{base}/regions/{region}/subnetworks/management",
            "networkIP": "10.200.0.7",
            "name": "nic1",
        }],
        "disks": [{"kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": "READ_WRITE", "source": f"{base}/zones/{zone}/disks/{name}",
                   "deviceName": "persistent-disk-0", "index": 0, "boot": True, "autoDelete": True, "interface": "SCSI", "diskSizeGb": "10"}],
        "metadata": {"kind": "compute#metadata", "fingerprint": "cPq6lqmXjZ8="},
        "serviceAccounts": [{"email": email, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}],
        "selfLink": f"{base}/zones/{zone}/instances/{name}",
        "scheduling": {"onHostMaintenance": "MIGRATE", "automaticRestart": True, "preemptible": False, "provisioningModel": "STANDARD"},
        "cpuPlatform": "Intel Broadwell",
        "labelFingerprint": "bRnA5hlxeHw=",
        "startRestricted": False,
        "deletionProtection": False,
        "fingerprint": "1X5VN9fpNDc=",
        "lastStartTimestamp": created,
    }
    if labels:
        instance["labels"] = labels  # Google leaves the key out when there are none
    return _apply(instance, overrides)


class ComputeApiStandIn(_JsonApi):
    """The Compute Engine API's instances.get on 127.0.0.1, at its real path
    `GET /compute/v1/projects/PROJECT/zones/ZONE/instances/INSTANCE` (the name or the
    numeric id), answering the instance resource or Google's 404 `notFound`. Every
    request needs `Authorization: Bearer` with an access token `tokens` issued with a
    Compute scope, else 401 (403 for a token without one), as Google's API does."""

    def __init__(self, tokens: GoogleTokenEndpoint):
        self.token_endpoint = tokens
        self.instances: dict[tuple[str, str, str], dict[str, Any]] = {}  # (project, zone, id) -> resource
        self.bearers: list[str] = []  # the access token of every authorized request
        super().__init__()
        self.endpoint = self.url("")

    @staticmethod
    def path(project: str, zone: str, instance: str) -> str:
        return f"/compute/v1/projects/{project}/zones/{zone}/instances/{instance}"

    def add(self, instance: dict[str, Any], *, instance_id: str | None = None) -> dict[str, Any]:
        """Serve `instance` (under `instance_id`, default its own `id`); returns it."""
        parts = instance["zone"].split("/")
        project, zone = parts[parts.index("projects") + 1], parts[-1]
        self.instances[(project, zone, instance_id or instance["id"])] = instance
        return instance

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        issued = self.token_endpoint.tokens.get(token) if scheme == "Bearer" else None
        if issued is None:
            return 401, _google_error(401, "UNAUTHENTICATED", "Request is missing required authentication credential.", "required")
        if not issued[1] & COMPUTE_SCOPES:
            return 403, _google_error(403, "PERMISSION_DENIED", "Request had insufficient authentication scopes.", "insufficientPermissions")
        self.bearers.append(token)
        parts = path.split("/")
        if method != "GET" or len(parts) != 9 or parts[1:4] != ["compute", "v1", "projects"] or parts[5] != "zones" or parts[7] != "instances":
            return 404, _google_error(404, "NOT_FOUND", "Not Found", "notFound")
        project, zone, wanted = parts[4], parts[6], parts[8]
        found = self.instances.get((project, zone, wanted)) or next(
            (i for (p, z, _), i in self.instances.items() if (p, z) == (project, zone) and i["name"] == wanted), None)
        if found is None:
            message = f"The resource 'projects/{project}/zones/{zone}/instances/{wanted}' was not found"
            return 404, _google_error(404, "NOT_FOUND", message, "notFound")
        return 200, found


# --- stand-ins for the platforms' metadata services --------------------------------------


@dataclass
class MetadataRequest:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case


class MetadataStandIn:
    """A platform's metadata service on 127.0.0.1: `answer` (per subclass) gives the
    real service's status, headers and body; every request is recorded."""

    def __init__(self) -> None:
        from urllib.parse import parse_qs, urlsplit

        self.requests: list[MetadataRequest] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def handle_request(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                request = MetadataRequest(self.command, parts.path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()})
                stand_in.requests.append(request)
                status, headers, body = stand_in.answer(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = handle_request  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, request: MetadataRequest) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ImdsStandIn(MetadataStandIn):
    """EC2's instance metadata service with IMDSv2 required (HttpTokens: required):
    `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1-21600)
    answers a session token; every GET needs a live one in `X-aws-ec2-metadata-token`,
    else 401; a PUT carrying `X-Forwarded-For` is refused (403) — as IMDS does."""

    TOKEN_PATH = "/latest/api/token"
    IDENTITY = "/latest/dynamic/instance-identity/"

    def __init__(self, document: str, signature: str, rsa2048: str | None = None):
        self.bodies = {"document": document, "signature": signature, "rsa2048": rsa2048}
        self.sessions: dict[str, float] = {}
        super().__init__()

    def answer(self, request: MetadataRequest) -> tuple[int, dict[str, str], bytes]:
        import secrets

        text = {"Content-Type": "text/plain", "Server": "EC2ws"}
        if request.path == self.TOKEN_PATH:
            if request.method != "PUT":
                return 405, text, b"Method Not Allowed"
            if "x-forwarded-for" in request.headers:
                return 403, text, b"Forbidden"
            ttl = request.headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return 400, text, b"Bad Request"
            session = secrets.token_urlsafe(42)
            self.sessions[session] = time.time() + int(ttl)
            return 200, {**text, "X-aws-ec2-metadata-token-ttl-seconds": ttl}, session.encode()
        if self.sessions.get(request.headers.get("x-aws-ec2-metadata-token", ""), 0) < time.time():
            return 401, text, b"Unauthorized"
        if request.method != "GET":
            return 405, text, b"Method Not Allowed"
        name = request.path.removeprefix(self.IDENTITY) if request.path.startswith(self.IDENTITY) else None
        body = self.bodies.get(name) if name else None
        if body is None:
            return 404, text, b"Not Found"
        return 200, text, body.encode()


class GcpMetadataStandIn(MetadataStandIn):
    """Compute Engine's metadata server: every request needs `Metadata-Flavor: Google`
    and no `X-Forwarded-For` (else 403), every answer carries `Metadata-Flavor: Google`;
    the default service account's `identity?audience=A&format=full|standard` is an
    identity token for A from `signer`. Without a service account (`service_account=False`): 404."""

    IDENTITY = "/computeMetadata/v1/instance/service-accounts/default/identity"

    def __init__(self, signer: GoogleSigner, *, service_account: bool = True):
        self.signer = signer
        self.service_account = service_account
        super().__init__()

    def answer(self, request: MetadataRequest) -> tuple[int, dict[str, str], bytes]:
        headers = {"Metadata-Flavor": "Google", "Content-Type": "application/text", "Server": "Metadata Server for VM"}
        if request.headers.get("metadata-flavor") != "Google" or "x-forwarded-for" in request.headers:
            body = f"Your client does not have permission to get URL {request.path} from this server. Missing Metadata-Flavor:Google header."
            return 403, {**headers, "Content-Type": "text/html"}, body.encode()
        if request.path != self.IDENTITY or not self.service_account:
            return 404, {**headers, "Content-Type": "text/html"}, f"The requested URL {request.path} was not found on this server.".encode()
        audience = request.query.get("audience", [""])[0]
        if not audience:
            return 400, headers, b"non-empty audience parameter required"
        token_format = request.query.get("format", ["standard"])[0]
        return 200, headers, self.signer.token(token_format, aud=audience).encode()


# --- chit's TLS certificate ------------------------------------------------------------


@dataclass(frozen=True)
class ServerCertificate:
    certificate_pem: bytes
    key_pem: bytes
    serial: int


class TestCertificateAuthority:
    """A private CA, as cert-manager's CA issuer would be: it issues chit's server
    certificates (ECDSA P-256) and is what clients verify them against."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str = "chit test CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        return path

    def issue(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ServerCertificate:
        """A server certificate for `hosts` (IP addresses or DNS names), with its key."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return ServerCertificate(certificate.public_bytes(serialization.Encoding.PEM), key_pem, certificate.serial_number)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.pem.decode())


class SecretVolume:
    """A directory as the kubelet mounts a Secret (cert-manager's `tls.crt`, `tls.key`):
    each file a symbolic link through `..data` to a timestamped directory, all of them
    replaced at once by renaming a new `..data` link over the old one."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, files: dict[str, bytes]) -> None:
        version = self.directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{uuid.uuid4().hex[:8]}"
        version.mkdir()
        for name, content in files.items():
            (version / name).write_bytes(content)
            link = self.directory / name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / name)
        staged = self.directory / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.directory / "..data")

    def write_certificate(self, certificate: ServerCertificate, key_pem: bytes | None = None) -> None:
        self.write({"tls.crt": certificate.certificate_pem, "tls.key": certificate.key_pem if key_pem is None else key_pem})


def served_serial(connection: ssl.SSLSocket) -> int:
    """The serial of the certificate this connection was served."""
    return x509.load_der_x509_certificate(connection.getpeercert(binary_form=True)).serial_number


def peer_certificate_serial(port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> int:
    """The serial of the certificate a new TLS connection to `host:port` is served."""
    with socket.create_connection((host, port), timeout=5) as raw, context.wrap_socket(raw, server_hostname=host) as connection:
        return served_serial(connection)


# --- a real chit server ------------------------------------------------------------


def read_audit_lines(path: Path) -> list[dict[str, Any]]:
    """The audit lines a chit process (the token server, the gateway) wrote to `path` so far."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_audit_line(read: Callable[[], list[dict[str, Any]]], decision_id: str, timeout: float) -> dict[str, Any]:
    """The audit line of `decision_id`, waiting up to `timeout` s for it to be written."""
    deadline = time.time() + timeout
    while True:
        for line in read():
            if line["decision_id"] == decision_id:
                return line
        if time.time() > deadline:
            raise AssertionError(f"no audit line for {decision_id}")
        time.sleep(0.05)


class ChitServer:
    """`chit serve` in a subprocess, configured from a dict, on a free port; over HTTPS
    with `tls`, a certificate that CA issues for 127.0.0.1 in a Secret-like volume
    (`tls_volume`), which `listen.tls` names relative to the config file. `listen`
    keys in `config` are added to the host and port it chooses."""

    def __init__(self, directory: Path, config: dict[str, Any], *, workers: int = 1, env: dict[str, str] | None = None,
                 tls: TestCertificateAuthority | None = None):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        listen: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        self.tls_volume: SecretVolume | None = None
        self.certificate: ServerCertificate | None = None
        if tls is not None:
            self.tls_volume = SecretVolume(directory / "tls")
            self.certificate = tls.issue()
            self.tls_volume.write_certificate(self.certificate)
            listen["tls"] = {"cert_file": "tls/tls.crt", "key_file": "tls/tls.key"}
        self.config = {
            "issuer": self.url,
            "signing": {"keys_dir": "keys"},
            "audit": {"sink": "audit.log"},
            **config,
            "listen": {**listen, **config.get("listen", {})},
        }
        self.config_path = directory / "chit.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.workers = workers
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=10, verify=tls.client_context() if tls else True)

    def start(self, timeout: float = 30, ready_path: str = "/readyz") -> ChitServer:
        log = open(self.directory / "server.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chit", "serve", "--config", str(self.config_path), "--workers", str(self.workers)],
            cwd=self.directory,
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chit exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.client.get(ready_path).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"chit not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> int | None:
        self.terminate()
        self.client.close()
        return None if self.process is None else self.process.returncode

    def terminate(self) -> None:
        """Stop the process only: `start()` brings chit back on the same port (an outage)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def exchange(self, subject_token: str | None, *, subject_token_type: str = JWT_TYPE, **fields: Any) -> httpx.Response:
        form: dict[str, Any] = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": subject_token_type}
        if subject_token is not None:
            form["subject_token"] = subject_token
        form.update({k: v for k, v in fields.items() if v is not None})
        return self.client.post("/token", data=form)

    def revoke(self, token: str | None, **fields: str) -> httpx.Response:
        """RFC 7009: POST /revoke with `token` (omitted when None)."""
        form = {"token": token, **fields} if token is not None else dict(fields)
        return self.client.post("/revoke", data=form)

    def introspect(self, token: str | None, bearer: str | None) -> httpx.Response:
        """RFC 7662: POST /introspect with `token`, authenticated by the `bearer` token."""
        headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
        return self.client.post("/introspect", data={} if token is None else {"token": token}, headers=headers)

    def is_active(self, token: str, bearer: str) -> bool:
        response = self.introspect(token, bearer)
        assert response.status_code == 200, response.text
        return response.json()["active"]

    def audit_lines(self) -> list[dict[str, Any]]:
        return read_audit_lines(self.directory / "audit.log")

    def audit_for(self, decision_id: str, timeout: float = 2.0) -> dict[str, Any]:
        return wait_for_audit_line(self.audit_lines, decision_id, timeout)

    def jwks(self) -> dict[str, Any]:
        return self.client.get("/.well-known/jwks.json").json()

    def verify_issued(self, token: str, audience: str | list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Verify a minted token the way a resource server would: offline, from the JWKS."""
        header = jwt.get_unverified_header(token)
        keys = {k["kid"]: k for k in self.jwks()["keys"]}
        key = jwt.PyJWK(keys[header["kid"]])
        claims = jwt.decode(token, key, algorithms=[key.algorithm_name], audience=audience, issuer=self.url)
        return header, claims


# The variables `chit exchange` / `chit agent` read defaults from: tests pass them explicitly.
CLIENT_ENV_VARIABLES = ("CHIT_URL", "CHIT_CA_FILE", "CHIT_SUBJECT_TOKEN_FILE", "CHIT_PROXY", "KUBERNETES_SERVICE_HOST",
                        "AWS_EC2_METADATA_SERVICE_ENDPOINT", "GCE_METADATA_HOST", "SSL_CERT_FILE", "SSL_CERT_DIR",
                        # A CI job's token sources (chit exchange --github-actions, --gitlab-ci, --buildkite)
                        "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "CHIT_ID_TOKEN", "BUILDKITE_AGENT_ACCESS_TOKEN")
# What clusters inject for a proxy, in the spellings urllib and httpx read; NO_PROXY emptied.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def proxy_env(url: str) -> dict[str, str]:
    """An environment that names `url` as the proxy for everything."""
    return {**{name: url for name in PROXY_VARIABLES}, "NO_PROXY": "", "no_proxy": ""}


def chit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "chit", *args]


def client_env(**variables: str) -> dict[str, str]:
    """This process's environment without the client's own variables, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_VARIABLES}
    return {**env, "PYTHONPATH": str(ROOT), **variables}


def run_chit(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`chit ARGS…` as a user runs it: a process, its exit code, stdout and stderr."""
    return subprocess.run(chit_command(*args), capture_output=True, text=True, timeout=timeout, env=client_env(**(env or {})), cwd=ROOT)


class AgentProcess:
    """`chit agent ARGS…` in a subprocess, its stdout and stderr in files."""

    def __init__(self, directory: Path, *args: str, env: dict[str, str] | None = None):
        self.stdout, self.stderr = directory / "agent.stdout", directory / "agent.stderr"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(chit_command("agent", *args), stdout=out, stderr=err, env=client_env(**(env or {})), cwd=ROOT)

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        wait_until(lambda: text in self.log(), timeout, f"{text!r} in the agent's log", self)

    def terminate(self, timeout: float = 10) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, agent: AgentProcess | None = None) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}" + (f"; agent log:\n{agent.log()}" if agent else ""))
        time.sleep(0.05)


def copy_policy(destination: Path, data: dict[str, Any] | None = None, rego: dict[str, str] | None = None) -> Path:
    """The shipped policy (without its tests), with `data` as its data.json."""
    shutil.copytree(ROOT / "policies", destination, ignore=shutil.ignore_patterns("*_test.rego", "*.md"))
    if data is not None:
        (destination / "data.json").write_text(json.dumps(data))
    for name, source in (rego or {}).items():
        (destination / name).write_text(source)
    return destination


# --- an OPA server stand-in ------------------------------------------------------------


def wait_for_http(client: httpx.Client, path: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Until `path` answers 200; fails with the process's log if it exits or never gets there."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if client.get(path).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{process.args[0]} not ready after {timeout} s:\n{log.read_text(errors='replace')}")


class OpaStandIn:
    """tests/opa_standin.py in a subprocess: OPA's REST API over a policy directory."""

    def __init__(self, policy_dir: Path, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=10)
        log = open(log_dir / "opa.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.opa_standin", "--addr", f"127.0.0.1:{self.port}", str(policy_dir)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_http(self.client, "/health", self.process, log_dir / "opa.log")

    @classmethod
    @contextlib.contextmanager
    def over(cls, directory: Path, bindings: dict[str, Any]) -> Iterator[OpaStandIn]:
        """A stand-in serving the shipped policy over `bindings`, stopped on exit."""
        server = cls(copy_policy(directory / "policies", bindings), directory)
        try:
            yield server
        finally:
            server.stop()

    def fault(self, **fault: Any) -> None:
        """status/body (a fixed answer), delay (seconds), close (drop the connection), paths."""
        self.client.put("/_standin/fault", json=fault).raise_for_status()

    def reset(self) -> None:
        self.client.delete("/_standin/fault").raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        return self.client.get("/_standin/requests").json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.client.close()


# --- a Kubernetes API server stand-in ----------------------------------------------------


def pod_for(claims: dict[str, Any], images: list[tuple[str, str]] | None = None, phase: str = "Running") -> dict[str, Any]:
    """The Pod a projected token's claims name, as the API serves it (core/v1).

    `images` are (spec image, status imageID) per container, the first one the app container.
    """
    k8s = claims["kubernetes.io"]
    images = images if images is not None else [("registry.example/agent:1.0", "registry.example/agent@sha256:" + "a" * 64)]
    names = [f"c{i}" for i in range(len(images))]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": k8s["pod"]["name"],
            "namespace": k8s["namespace"],
            "uid": k8s["pod"]["uid"],
            "resourceVersion": "4711",
            "creationTimestamp": "2026-11-22T01:00:00Z",
            "labels": {"app": "agent"},
        },
        "spec": {
            "serviceAccountName": k8s["serviceaccount"]["name"],
            "nodeName": k8s.get("node", {}).get("name", "node-1"),
            "containers": [{"name": n, "image": image} for n, (image, _) in zip(names, images)],
        },
        "status": {
            "phase": phase,
            "podIP": "10.0.0.7",
            "startTime": "2026-11-22T01:00:01Z",
            "containerStatuses": [
                {"name": n, "image": image, "imageID": image_id, "ready": True, "restartCount": 0, "started": True,
                 "state": {"running": {"startedAt": "2026-11-22T01:00:02Z"}}, "containerID": f"containerd://{uuid.uuid4().hex}"}
                for n, (image, image_id) in zip(names, images)
            ],
        },
    }


class KubernetesApiStandIn(DocumentServer):
    """Answers TokenReview and Pod GET on 127.0.0.1 exactly in the Kubernetes API's JSON shapes.

    TokenReview verifies the token with the issuer's public key and audiences,
    as the API server's service-account authenticator does; `reviews[pod name]`
    may rewrite the answer's status for negative tests. Pods come from `pods`.
    Every request must carry `Authorization: Bearer <credential>` (chit's
    token_file), else 401. A SelfSubjectAccessReview is allowed for the
    (verb, group, resource) in `permissions` (by default what chit's ClusterRole grants).
    `request_headers[path]` lists the headers of each request, in order.
    """

    def __init__(self, issuer: ClusterIssuer, credential: str) -> None:
        self.issuer = issuer
        self.credential = credential
        self.permissions: set[tuple[str, str, str]] = {("create", "authentication.k8s.io", "tokenreviews"), ("get", "", "pods")}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.reviews: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        super().__init__()
        self.httpd.RequestHandlerClass = self._handler()

    @staticmethod
    def status(code: int, reason: str, message: str) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}

    def review(self, spec: dict[str, Any]) -> dict[str, Any]:
        audiences = spec.get("audiences") or ["https://kubernetes.default.svc"]
        try:
            claims = jwt.decode(spec["token"], self.issuer.private_key.public_key(), algorithms=[self.issuer.algorithm], audience=audiences, issuer=self.issuer.issuer)
        except jwt.PyJWTError as error:
            return {"user": {}, "error": f"[invalid bearer token, {error}]"}
        k8s = claims["kubernetes.io"]
        status = {
            "authenticated": True,
            "user": {
                "username": claims["sub"],
                "uid": k8s["serviceaccount"]["uid"],
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{k8s['namespace']}", "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"],
                    "authentication.kubernetes.io/node-name": [k8s["node"]["name"]],
                    "authentication.kubernetes.io/node-uid": [k8s["node"]["uid"]],
                    "authentication.kubernetes.io/pod-name": [k8s["pod"]["name"]],
                    "authentication.kubernetes.io/pod-uid": [k8s["pod"]["uid"]],
                },
            },
            "audiences": [a for a in audiences if a in jwt_audiences(claims)],
        }
        rewrite = self.reviews.get(k8s["pod"]["name"])
        return rewrite(status) if rewrite else status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self, status: int, document: Any) -> None:
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def handle_api(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.hits[self.path] = api.hits.get(self.path, 0) + 1
                api.requests.append((method, self.path, json.loads(body) if body else None))
                api.request_headers.setdefault(self.path, []).append({k.lower(): v for k, v in self.headers.items()})
                if self.path in api.delays:
                    time.sleep(api.delays[self.path])
                if self.path in api.failures:
                    return self.answer(api.failures[self.path], api.status(api.failures[self.path], "InternalError", "stand-in failure"))
                if self.headers.get("Authorization") != f"Bearer {api.credential}":
                    return self.answer(401, api.status(401, "Unauthorized", "Unauthorized"))
                if method == "POST" and self.path == "/apis/authentication.k8s.io/v1/tokenreviews":
                    spec = json.loads(body)["spec"]
                    return self.answer(201, {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                                             "metadata": {"creationTimestamp": None}, "spec": spec, "status": api.review(spec)})
                if method == "POST" and self.path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
                    spec = json.loads(body)["spec"]
                    asked = spec["resourceAttributes"]
                    allowed = (asked.get("verb"), asked.get("group", ""), asked.get("resource")) in api.permissions
                    status = {"allowed": allowed} if allowed else {"allowed": False, "reason": "no RBAC policy matched"}
                    return self.answer(201, {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                                             "metadata": {"creationTimestamp": None}, "spec": spec, "status": status})
                parts = self.path.split("/")
                if method == "GET" and len(parts) == 7 and parts[1:4] == ["api", "v1", "namespaces"] and parts[5] == "pods":
                    pod = api.pods.get((parts[4], parts[6]))
                    if pod is None:
                        return self.answer(404, {**api.status(404, "NotFound", f'pods "{parts[6]}" not found'), "details": {"name": parts[6], "kind": "pods"}})
                    return self.answer(200, pod)
                return self.answer(404, api.status(404, "NotFound", "the server could not find the requested resource"))

            def do_GET(self) -> None:  # noqa: N802
                self.handle_api("GET")

            def do_POST(self) -> None:  # noqa: N802
                self.handle_api("POST")

        return Handler

    def add_pod(self, token: str, **pod: Any) -> dict[str, Any]:
        """Register the pod the token names (see pod_for); returns it for the test to alter."""
        document = pod_for(jwt.decode(token, options={"verify_signature": False}), **pod)
        self.pods[(document["metadata"]["namespace"], document["metadata"]["name"])] = document
        return document


def jwt_audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud", [])
    return [aud] if isinstance(aud, str) else list(aud)


# --- a real OCI registry (Debian's docker-registry) and cosign-format signatures -----------------


def sha256_digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def pem_public_key(private_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class OciRegistry:
    """`docker-registry serve` (distribution 2.8) on 127.0.0.1 with a temporary storage dir;
    images and cosign signatures are pushed through the OCI distribution API."""

    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"

    def __init__(self, directory: Path, token_service: RegistryTokenService | None = None):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "error", "fields": {"service": "registry"}},
            "storage": {"filesystem": {"rootdirectory": str(directory / "storage")}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": uuid.uuid4().hex},
        }
        if token_service is not None:
            config["auth"] = {"token": token_service.registry_config(directory)}
        (directory / "registry.yml").write_text(yaml.safe_dump(config))
        binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        self.process = subprocess.Popen([binary, "serve", str(directory / "registry.yml")], stdout=open(directory / "registry.log", "ab"), stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=10, auth=token_service.auth() if token_service else None)
        wait_for_http(self.client, "/v2/", self.process, directory / "registry.log")

    def push_blob(self, repository: str, data: bytes) -> dict[str, Any]:
        digest = sha256_digest(data)
        started = self.client.post(f"/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        # The Location keeps the upload's state in its query: append the digest to it.
        done = self.client.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", content=data, headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        return {"digest": digest, "size": len(data)}

    def push_manifest(self, repository: str, tag: str, manifest: dict[str, Any]) -> str:
        body = json.dumps(manifest).encode()
        response = self.client.put(f"/v2/{repository}/manifests/{tag}", content=body, headers={"Content-Type": self.OCI_MANIFEST})
        assert response.status_code == 201, response.text
        assert response.headers["Docker-Content-Digest"] == sha256_digest(body)
        return sha256_digest(body)

    def push_image(self, repository: str, tag: str = "1.0") -> tuple[str, str]:
        """A small image (config + one layer, unique content); returns (ref by digest, digest)."""
        config = self.push_blob(repository, json.dumps({"architecture": "amd64", "os": "linux", "nonce": uuid.uuid4().hex}).encode())
        layer = self.push_blob(repository, os.urandom(256))
        digest = self.push_manifest(repository, tag, {
            "schemaVersion": 2,
            "mediaType": self.OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
        })
        return f"{self.host}/{repository}@{digest}", digest

    def sign(self, repository: str, digest: str, *signers: Any, payload_digest: str | None = None, tamper: bool = False) -> None:
        """Push cosign's signature manifest (tag sha256-<hex>.sig): one simple-signing layer per signer key.

        `payload_digest` names another image in the payload; `tamper` changes the payload after signing.
        """
        import base64 as b64

        from cryptography.hazmat.primitives import hashes

        layers = []
        for key in signers:
            payload = json.dumps({
                "critical": {
                    "identity": {"docker-reference": f"{self.host}/{repository}"},
                    "image": {"docker-manifest-digest": payload_digest or digest},
                    "type": "cosign container image signature",
                },
                "optional": None,
            }, separators=(",", ":")).encode()
            signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
            if tamper:
                payload = payload.replace(b'"optional":null', b'"optional":{"creator":"mallory"}')
            blob = self.push_blob(repository, payload)
            layers.append({"mediaType": self.SIMPLE_SIGNING, **blob, "annotations": {"dev.cosignproject.cosign/signature": b64.b64encode(signature).decode()}})
        config = self.push_blob(repository, b"{}")
        self.push_manifest(repository, digest.replace(":", "-") + ".sig", {
            "schemaVersion": 2,
            "mediaType": self.OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": layers,
        })

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.client.close()


class RegistryTokenService:
    """The token server of distribution's token auth (the Docker token authentication spec):
    GET /token?service=…&scope=… answers {"token"}: an ES256 JWT whose x5c header carries a
    self-signed certificate the registry trusts (its rootcertbundle), granting what is asked.
    `requests` records each query and whether it carried credentials."""

    SERVICE = "chit-test-registry"
    ISSUER = "chit-test-token-issuer"

    def __init__(self) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chit test token issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        self.requests: list[dict[str, Any]] = []
        self.available = True
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                from urllib.parse import parse_qs, urlsplit

                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                service.requests.append({**query, "authorization": self.headers.get("Authorization")})
                if not service.available:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = json.dumps({"token": service.token(query.get("scope", "")), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, scope: str) -> str:
        access = []
        for item in scope.split(" "):
            parts = item.split(":")
            if len(parts) == 3:
                access.append({"type": parts[0], "name": parts[1], "actions": parts[2].split(",")})
        now = int(time.time())
        claims = {"iss": self.ISSUER, "sub": "", "aud": self.SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": uuid.uuid4().hex, "access": access}
        from cryptography.hazmat.primitives.serialization import Encoding

        x5c = base64.b64encode(self.certificate.public_bytes(Encoding.DER)).decode()
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"x5c": [x5c]})

    def registry_config(self, directory: Path) -> dict[str, Any]:
        (directory / "token-ca.pem").write_bytes(self.pem)
        return {"realm": self.realm, "service": self.SERVICE, "issuer": self.ISSUER, "rootcertbundle": str(directory / "token-ca.pem")}

    def auth(self) -> httpx.Auth:
        """For the tests' own pushes: answer the registry's Bearer challenge with a token."""
        realm = self.realm

        class ChallengeAuth(httpx.Auth):
            def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
                response = yield request
                challenge = response.headers.get("WWW-Authenticate", "")
                if response.status_code == 401 and challenge.startswith("Bearer "):
                    import re

                    values = dict(re.findall(r'([A-Za-z_]+)="([^"]*)"', challenge))
                    token = httpx.get(realm, params={k: values[k] for k in ("service", "scope") if k in values}).json()["token"]
                    request.headers["Authorization"] = f"Bearer {token}"
                    yield request

        return ChallengeAuth()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

# --- AWS: a test region certificate, instance identity documents, a local AWS API -------------

AWS_IID_TYPE = "urn:chit:params:oauth:token-type:aws-iid"
AWS_CREDENTIALS_TYPE = "urn:chit:params:oauth:token-type:aws-credentials"
MOTO_ACCOUNT = "123456789012"  # the account every moto resource belongs to


class RegionCertificate:
    """A stand-in for AWS's certificate of one region: a self-signed RSA certificate
    and its key, signing documents the way IMDS serves them."""

    def __init__(self, bits: int = 2048, *, valid_from: float | None = None, valid_until: float | None = None):
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        now = time.time()
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon Web Services LLC (test)")])
        moment = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc)  # noqa: E731
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(moment(valid_from if valid_from is not None else now - 86400))
            .not_valid_after(moment(valid_until if valid_until is not None else now + 365 * 86400))
            .sign(self.private_key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def signature(self, document: str) -> str:
        """/latest/dynamic/instance-identity/signature: base64 in 76-character lines."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        signature = self.private_key.sign(document.encode(), padding.PKCS1v15(), hashes.SHA256())
        return base64.encodebytes(signature).decode().rstrip("\n")

    def rsa2048(self, document: str, *, digest: str = "sha256", detached: bool = False, attributes: bool = True, ber: bool = True) -> str:
        """/latest/dynamic/instance-identity/rsa2048: PKCS#7 SignedData in base64 lines,
        BER-encoded with indefinite lengths as AWS serves it (`ber=False`: DER)."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.serialization import pkcs7

        options = [pkcs7.PKCS7Options.Binary]
        if detached:
            options.append(pkcs7.PKCS7Options.DetachedSignature)
        if not attributes:
            options.append(pkcs7.PKCS7Options.NoAttributes)
        blob = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(document.encode())
            .add_signer(self.certificate, self.private_key, hashes.SHA256() if digest == "sha1" else getattr(hashes, digest.upper())())
            .sign(serialization.Encoding.DER, options)
        )
        if digest == "sha1":
            blob = self._resign_sha1(blob, document.encode())
        return base64.encodebytes(ber_indefinite(blob, chunk=512) if ber else blob).decode().rstrip("\n")

    def _resign_sha1(self, blob: bytes, document: bytes) -> bytes:
        """The same SignedData, correctly signed over SHA-1 (cryptography only builds SHA-2)."""
        import hashlib

        from asn1crypto import algos, cms
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        info = cms.ContentInfo.load(blob)
        signed_data = info["content"]
        signed_data["digest_algorithms"] = [algos.DigestAlgorithm({"algorithm": "sha1"})]
        signer = signed_data["signer_infos"][0]
        signer["digest_algorithm"] = algos.DigestAlgorithm({"algorithm": "sha1"})
        attributes = [a for a in signer["signed_attrs"] if a["type"].native != "message_digest"]
        attributes.append(cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha1(document).digest()]}))
        signer["signed_attrs"] = cms.CMSAttributes(attributes)
        to_sign = b"\x31" + signer["signed_attrs"].dump(force=True)[1:]
        signer["signature"] = self.private_key.sign(to_sign, padding.PKCS1v15(), hashes.SHA1())
        return info.dump(force=True)


def ber_indefinite(der: bytes, chunk: int | None = None) -> bytes:
    """Re-encode DER with indefinite lengths for every constructed value (and octet
    strings longer than `chunk` as constructed strings): BER as AWS's rsa2048 is."""

    def header(tag: int, length: int) -> bytes:
        if length < 0x80:
            return bytes([tag, length])
        size = length.to_bytes((length.bit_length() + 7) // 8, "big")
        return bytes([tag, 0x80 | len(size)]) + size

    out, i = b"", 0
    while i < len(der):
        tag, first = der[i], der[i + 1]
        i += 2
        length = first
        if first & 0x80:
            count = first & 0x7F
            length = int.from_bytes(der[i : i + count], "big")
            i += count
        value, i = der[i : i + length], i + length
        if tag & 0x20:
            out += bytes([tag, 0x80]) + ber_indefinite(value, chunk) + b"\0\0"
        elif tag == 0x04 and chunk and len(value) > chunk:
            pieces = b"".join(header(0x04, len(value[k : k + chunk])) + value[k : k + chunk] for k in range(0, len(value), chunk))
            out += b"\x24\x80" + pieces + b"\0\0"
        else:
            out += header(tag, len(value)) + value
    return out


def write_certificates(directory: Path, certificates: dict[str, dict[str, RegionCertificate]]) -> Path:
    """A `certificates_dir`: {"signature": {REGION: cert}, "rsa2048": {REGION: cert}}."""
    for form, regions in certificates.items():
        (directory / form).mkdir(parents=True, exist_ok=True)
        for region, certificate in regions.items():
            (directory / form / f"{region}.pem").write_bytes(certificate.pem)
    return directory


def instance_document(
    instance_id: str = "i-0b02d936754a6d637",
    *,
    account_id: str = MOTO_ACCOUNT,
    region: str = "us-east-1",
    availability_zone: str | None = None,
    image_id: str = "ami-0c7217cdde317cfec",
    pending_time: str = "2026-01-15T14:12:11Z",
    **overrides: Any,
) -> str:
    """An instance identity document formatted exactly as IMDS serves one."""
    document: dict[str, Any] = {
        "accountId": account_id,
        "architecture": "x86_64",
        "availabilityZone": availability_zone or f"{region}b",
        "billingProducts": None,
        "devpayProductCodes": None,
        "marketplaceProductCodes": None,
        "imageId": image_id,
        "instanceId": instance_id,
        "instanceType": "t3.micro",
        "kernelId": None,
        "pendingTime": pending_time,
        "privateIp": "172.31.17.154",
        "ramdiskId": None,
        "region": region,
        "version": "2017-09-30",
    }
    for key, value in overrides.items():
        if value is DROP:
            document.pop(key, None)
        else:
            document[key] = value
    return json.dumps(document, indent=2, separators=(",", " : "))


def iid_token(document: str, nonce: str | None, *, padded: bool = False, **signature: str) -> str:
    """The aws-iid subject token: base64url(JSON {document, signature | rsa2048, nonce})."""
    body: dict[str, Any] = {"document": document, **signature}
    if nonce is not None:
        body["nonce"] = nonce
    encoded = base64.urlsafe_b64encode(json.dumps(body).encode()).decode()
    return encoded if padded else encoded.rstrip("=")


def new_nonce() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


@dataclass
class RecordedRequest:
    form: dict[str, str]
    headers: dict[str, str]


class MotoServer:
    """A real local AWS API (`moto_server`: STS, EC2, IAM, …) on a free port, recording
    every request it receives so tests can read what chit sent."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> MotoServer:
        log = open(self.directory / "moto.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            cwd=self.directory,
            env={**os.environ, "MOTO_RECORDER_FILEPATH": str(self.directory / "recording")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
            try:
                if httpx.post(f"{self.url}/moto-api/recorder/start-recording").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"moto_server not ready after {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, service: str, region: str = "us-east-1", credentials: dict[str, str] | None = None) -> Any:
        import boto3

        keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        if credentials is not None:
            keys = {
                "aws_access_key_id": credentials["AccessKeyId"],
                "aws_secret_access_key": credentials["SecretAccessKey"],
                "aws_session_token": credentials["SessionToken"],
            }
        return boto3.client(service, region_name=region, endpoint_url=self.url, **keys)

    def requests(self, action: str) -> list[RecordedRequest]:
        """Every recorded request for the Query API `action`, oldest first."""
        from urllib.parse import parse_qsl

        lines = httpx.get(f"{self.url}/moto-api/recorder/download-recording").text.splitlines()
        found = []
        for line in lines:
            record = json.loads(line)
            body = record.get("body") or ""
            if record.get("body_encoded"):
                body = base64.b64decode(body).decode()
            form = dict(parse_qsl(body))
            if form.get("Action") == action:
                found.append(RecordedRequest(form, record.get("headers", {})))
        return found

    def launch_instance(self, region: str = "us-east-1", *, tags: dict[str, str] | None = None, image_id: str | None = None) -> dict[str, Any]:
        """Run an instance in moto; returns its DescribeInstances description."""
        ec2 = self.client("ec2", region)
        if image_id is None:
            image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        parameters: dict[str, Any] = {"ImageId": image_id, "MinCount": 1, "MaxCount": 1, "InstanceType": "t3.micro"}
        parameters["Placement"] = {"AvailabilityZone": f"{region}b"}
        if tags:
            parameters["TagSpecifications"] = [
                {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
            ]
        return ec2.run_instances(**parameters)["Instances"][0]

    @staticmethod
    def document_for(instance: dict[str, Any], region: str = "us-east-1") -> str:
        """The identity document IMDS would serve on a moto instance."""
        return instance_document(
            instance["InstanceId"],
            region=region,
            availability_zone=instance["Placement"]["AvailabilityZone"],
            image_id=instance["ImageId"],
            pending_time=instance["LaunchTime"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        )


# Hop-by-hop headers (RFC 9110 §7.6.1) and those httpx recomputes: a relay does not pass them on.
_NOT_RELAYED = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
                          "transfer-encoding", "upgrade", "content-length", "content-encoding", "host"})


class HttpRelay:
    """An HTTP server on 127.0.0.1 that records the request line of every request it
    receives (`requests`) and relays requests on:

    - as a forward proxy (no `upstream`): an absolute-form request (RFC 9112 §3.2.2,
      `POST http://host/path`) goes to the origin it names; anything else (CONNECT
      included) is answered 502. `forward=False` records only, answering 502;
    - as chit's TLS front (`upstream` set, `tls` = (certificate file, key file)):
      every request goes to `upstream`, the way an ingress terminates TLS for chit.
    """

    def __init__(self, *, forward: bool = True, upstream: str | None = None, tls: tuple[Path, Path] | None = None):
        self.requests: list[str] = []
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def parse_request(self) -> bool:
                relay.requests.append(self.raw_requestline.decode("latin-1").rstrip("\r\n"))
                return super().parse_request()

            def log_message(self, *args: Any) -> None:
                pass

            def relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = upstream + self.path if upstream else self.path
                if not forward or not target.startswith("http://"):
                    self.answer(502, {}, b"")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_RELAYED}
                with httpx.Client(trust_env=False, timeout=10) as client:
                    response = client.request(self.command, target, headers=headers, content=body)
                self.answer(response.status_code, {k: v for k, v in response.headers.items() if k.lower() not in _NOT_RELAYED}, response.content)

            def answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_CONNECT = relay  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def tls_certificate_for_localhost(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a certificate it issued for 127.0.0.1: (CA file, certificate file, key file)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chit test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "tls.pem", directory / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


class HangingServer:
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def stop(self) -> None:
        self.socket.close()


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


# Keeps AWS SDKs in chit's test processes from reading this machine's AWS
# configuration or probing an instance metadata service.
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


# --- a real Redis ----------------------------------------------------------------------


class RedisServer:
    """Debian's `redis-server` on a free loopback port, in memory only (no RDB, no AOF).

    `kill()` ends it at once (SIGKILL), `start()` brings it back on the same port,
    `freeze()`/`thaw()` stop and continue it (connections stay open, nothing answers).
    `args` are more redis-server options (`--replicaof HOST PORT`, `--requirepass …`)."""

    def __init__(self, directory: Path, *args: str, port: int | None = None):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> RedisServer:
        import redis

        log = open(self.directory / "redis.log", "ab")
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--protected-mode", "yes", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = self.client(timeout=1)
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}")
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server not ready after {timeout} s")

    def client(self, timeout: float = 5) -> Any:
        import redis

        password = self.args[self.args.index("--requirepass") + 1] if "--requirepass" in self.args else None
        return redis.Redis(port=self.port, password=password, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class KeySourceClock:
    """The key sources' clock (chit.attestors.jwks), advanced by hand: the refetch
    interval and the freshness of cached keys pass without waiting for them."""

    def __init__(self, monkeypatch: Any) -> None:
        import chit.attestors.jwks

        self.now = 1000.0
        monkeypatch.setattr(chit.attestors.jwks, "_clock", lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds
