"""The issuer's documents for relying parties that cannot reach chit: `chit keys export`
(the JWKS, for an inline registration) and `chit keys publish` (discovery and JWKS
on static hosting, an S3 bucket), docs/operators/keys.md "Exporting and publishing the keys".

The documents are those chit serves, for the configured `issuer`: a relying party
fetches `ISSUER/.well-known/openid-configuration`, checks that its `issuer` is the
`iss` of the tokens and follows its `jwks_uri` (OpenID Connect Discovery 1.0 §4),
so the bucket is served at the issuer's URL (a CDN or a website endpoint in front of
it) and the URLs in the documents stay the issuer's. The published discovery
document holds only what a relying party reads to verify tokens: the static host
serves no token, revocation or introspection endpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from chit.server.app import server_metadata
from chit.server.config import Config
from chit.server.keys import KeyStore

DISCOVERY_PATH = ".well-known/openid-configuration"
JWKS_PATH = ".well-known/jwks.json"
# OpenID Connect Discovery 1.0 §3: the members a relying party needs to verify an ID token.
_VERIFIER_MEMBERS = ("issuer", "jwks_uri", "response_types_supported", "subject_types_supported", "id_token_signing_alg_values_supported")
# A relying party that meets an unknown kid refetches; keep caches short so a rotated
# key is seen within the grace period (docs/operators/keys.md "Rotation").
JWKS_CACHE_CONTROL = "public, max-age=60"
DISCOVERY_CACHE_CONTROL = "public, max-age=300"


@dataclass(frozen=True, slots=True)
class StaticDocument:
    path: str  # relative to the issuer's URL
    body: bytes
    content_type: str
    cache_control: str


def jwks(keys: KeyStore, now: float) -> dict[str, Any]:
    """Every published key: upcoming ones (before they sign), active ones, and predecessors
    whose tokens may still be alive."""
    return {"keys": [key.jwk for key in keys.published(now)]}


def issuer_documents(config: Config, keys: KeyStore, now: float) -> list[StaticDocument]:
    metadata = server_metadata(config, keys)
    discovery = {name: metadata[name] for name in _VERIFIER_MEMBERS}
    return [
        StaticDocument(DISCOVERY_PATH, json.dumps(discovery, indent=1).encode(), "application/json", DISCOVERY_CACHE_CONTROL),
        StaticDocument(JWKS_PATH, json.dumps(jwks(keys, now), indent=1).encode(), "application/jwk-set+json", JWKS_CACHE_CONTROL),
    ]


def object_key(prefix: str | None, issuer: str, path: str) -> str:
    """The object a document is stored as: under `prefix`, by default the issuer's own path
    (https://host/tenant → tenant/.well-known/…), so that a bucket served at the issuer's
    host answers the issuer's URLs."""
    base = (urlsplit(issuer).path if prefix is None else prefix).strip("/")
    return f"{base}/{path}" if base else path


def publish_to_s3(s3: Any, bucket: str, prefix: str | None, issuer: str, documents: list[StaticDocument]) -> list[str]:
    """PUT each document (S3 PutObject), JWKS first: the discovery document never names keys
    the bucket does not serve yet. Returns the object keys written."""
    written = []
    for document in sorted(documents, key=lambda d: d.path != JWKS_PATH):
        key = object_key(prefix, issuer, document.path)
        s3.put_object(Bucket=bucket, Key=key, Body=document.body, ContentType=document.content_type, CacheControl=document.cache_control)
        written.append(key)
    return written
