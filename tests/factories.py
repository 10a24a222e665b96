"""Small factories for chit's tests: a cluster issuer with its own keys, a local
HTTP server standing in for its JWKS endpoint, and a real `chit serve` process.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import httpx
import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
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

    def add_key(self) -> str:
        """A new published key (Google rotates keys this way); returns its kid."""
        kid = uuid.uuid4().hex
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
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
    makes it slow, `headers[path]` adds response headers (e.g. Cache-Control);
    `stop()` closes the socket.
    """

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.hits: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.delays: dict[str, float] = {}
        self.headers: dict[str, dict[str, str]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path in server.delays:
                    time.sleep(server.delays[self.path])
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


# --- a real chit server ------------------------------------------------------------


class ChitServer:
    """`chit serve` in a subprocess, configured from a dict, on a free port."""

    def __init__(self, directory: Path, config: dict[str, Any], *, workers: int = 1, env: dict[str, str] | None = None):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {
            "issuer": self.url,
            "listen": {"host": "127.0.0.1", "port": self.port},
            "signing": {"keys_dir": "keys"},
            "audit": {"sink": "audit.log"},
            **config,
        }
        self.config_path = directory / "chit.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.workers = workers
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def start(self, timeout: float = 30) -> ChitServer:
        log = open(self.directory / "server.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--config", str(self.config_path), "--workers", str(self.workers)],
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
                if self.client.get("/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"chit not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> int | None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()
        return None if self.process is None else self.process.returncode

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def exchange(self, subject_token: str | None, *, subject_token_type: str = JWT_TYPE, **fields: Any) -> httpx.Response:
        form: dict[str, Any] = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": subject_token_type}
        if subject_token is not None:
            form["subject_token"] = subject_token
        form.update({k: v for k, v in fields.items() if v is not None})
        return self.client.post("/token", data=form)

    def audit_lines(self) -> list[dict[str, Any]]:
        path = self.directory / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def audit_for(self, decision_id: str, timeout: float = 2.0) -> dict[str, Any]:
        deadline = time.time() + timeout
        while True:
            for line in self.audit_lines():
                if line["decision_id"] == decision_id:
                    return line
            if time.time() > deadline:
                raise AssertionError(f"no audit line for {decision_id}")
            time.sleep(0.05)

    def jwks(self) -> dict[str, Any]:
        return self.client.get("/.well-known/jwks.json").json()

    def verify_issued(self, token: str, audience: str | list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Verify a minted token the way a resource server would: offline, from the JWKS."""
        header = jwt.get_unverified_header(token)
        keys = {k["kid"]: k for k in self.jwks()["keys"]}
        key = jwt.PyJWK(keys[header["kid"]])
        claims = jwt.decode(token, key, algorithms=[key.algorithm_name], audience=audience, issuer=self.url)
        return header, claims


def copy_policy(destination: Path, data: dict[str, Any] | None = None, rego: dict[str, str] | None = None) -> Path:
    """The shipped policy (without its tests), with `data` as its data.json."""
    shutil.copytree(ROOT / "policies", destination, ignore=shutil.ignore_patterns("*_test.rego", "*.md"))
    if data is not None:
        (destination / "data.json").write_text(json.dumps(data))
    for name, source in (rego or {}).items():
        (destination / name).write_text(source)
    return destination
