"""Development mode: `chit serve --dev` and `chit dev token`.

A development cluster issuer lives under the state directory (`./.chit/` by
default): its private key signs projected-token-shaped JWTs for `chit dev
token`, its public JWKS is trusted by a `--dev` server only. Its issuer URL is
under `.invalid` (RFC 2606), so it can never be fetched or confused with a real
cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from chit.attestors.kubernetes.config import Cluster
from chit.server.config import Config, parse_config
from chit.server.keys import jwk_thumbprint

DEV_STATE_DIR = Path(".chit")
DEV_CLUSTER = "dev"
DEV_ISSUER = "https://dev-cluster.chit.invalid"
DEV_AUDIENCE = "chit"
DEV_TOKEN_TTL = 3600


def _issuer_dir(state_dir: Path) -> Path:
    return state_dir / "dev-cluster"


def prepare_dev_issuer(state_dir: Path) -> Path:
    """Create the development issuer's key pair once; returns its JWKS file."""
    directory = _issuer_dir(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, jwks_path = directory / "key.pem", directory / "jwks.json"
    if not key_path.exists():
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
    private_key = _load_key(state_dir)
    jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    jwk.update(kid=jwk_thumbprint(jwk), alg="RS256", use="sig")
    jwks_path.write_text(json.dumps({"keys": [jwk]}, indent=2))
    return jwks_path


def _load_key(state_dir: Path) -> rsa.RSAPrivateKey:
    path = _issuer_dir(state_dir) / "key.pem"
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise SystemExit(f"no development cluster under {state_dir}: start `chit serve --dev` first") from None
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def dev_cluster(state_dir: Path) -> Cluster:
    return Cluster(
        name=DEV_CLUSTER,
        issuer=DEV_ISSUER,
        jwks_file=prepare_dev_issuer(state_dir).resolve(),
        audiences=[DEV_AUDIENCE],
    )


def dev_config(state_dir: Path, host: str, port: int, base: Config | None = None) -> Config:
    """The embedded defaults of `chit serve --dev`, or `base` plus the development cluster."""
    state_dir = state_dir.resolve()
    if base is None:
        base = parse_config(
            {
                "issuer": f"http://{host}:{port}",
                "listen": {"host": host, "port": port},
                "signing": {"keys_dir": str(state_dir / "keys")},
            },
            "(dev defaults)",
            state_dir,
        )
    kubernetes = base.attestors.kubernetes
    if any(c.name == DEV_CLUSTER for c in kubernetes.clusters):
        raise SystemExit(f"--dev adds a cluster named {DEV_CLUSTER!r}; the configuration already has one")
    clusters = [*kubernetes.clusters, dev_cluster(state_dir)]
    attestors = base.attestors.model_copy(update={"kubernetes": kubernetes.model_copy(update={"clusters": clusters})})
    return base.model_copy(update={"attestors": attestors, "dev": True})


def dev_token(
    state_dir: Path,
    *,
    namespace: str,
    service_account: str,
    pod: str | None = None,
    audience: str = DEV_AUDIENCE,
    ttl: int = DEV_TOKEN_TTL,
) -> str:
    """A token shaped like a Kubernetes projected service-account token."""
    private_key = _load_key(state_dir)
    jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    now = int(time.time())
    pod_name = pod or f"{service_account}-{secrets.token_hex(3)}"
    claims = {
        "aud": [audience],
        "exp": now + ttl,
        "iat": now,
        "nbf": now,
        "iss": DEV_ISSUER,
        "jti": str(uuid.uuid4()),
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "dev-node", "uid": str(uuid.uuid4())},
            "pod": {"name": pod_name, "uid": str(uuid.uuid4())},
            "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
        },
    }
    return jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": jwk_thumbprint(jwk)})
