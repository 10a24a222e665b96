"""The aws-iam subject token (docs/reference/http-api.md "The aws-iam subject token"):
base64url of a JSON object `{"method", "url", "headers", "body"}`, the signed
request exactly as the workload would have sent it to STS. Standard library
only: the agent encodes, the server parses.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Mapping

from chit.attestors.base import InvalidEvidence, evidence_object

MAX_TOKEN_LENGTH = 16 * 1024
MAX_HEADERS = 16
MAX_HEADER_VALUE = 8 * 1024
MEMBERS = frozenset({"method", "url", "headers", "body"})


@dataclass(frozen=True, slots=True)
class SignedRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: str


def encode_subject_token(request: SignedRequest) -> str:
    document = {"method": request.method, "url": request.url, "headers": dict(request.headers), "body": request.body}
    return base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":")).encode()).rstrip(b"=").decode()


def parse_subject_token(token: str) -> SignedRequest:
    """The envelope, strictly: base64url, a JSON object with exactly the four members,
    each of its type, headers a flat object of strings (no name twice, in any case)."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidEvidence(f"aws-iam token longer than {MAX_TOKEN_LENGTH} characters")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidEvidence("aws-iam token is not base64url") from None
    document = evidence_object(raw, "aws-iam token")
    if set(document) != MEMBERS:
        raise InvalidEvidence("aws-iam token must have exactly the members method, url, headers, body")
    method, url, headers, body = (document[k] for k in ("method", "url", "headers", "body"))
    if not all(isinstance(v, str) for v in (method, url, body)):
        raise InvalidEvidence("aws-iam token: method, url and body must be strings")
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        raise InvalidEvidence(f"aws-iam token: headers must be an object of at most {MAX_HEADERS} members")
    if len({name.lower() for name in headers}) != len(headers):
        raise InvalidEvidence("aws-iam token: a header is named twice")
    for name, value in headers.items():
        if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE:
            raise InvalidEvidence("aws-iam token: header values must be strings")
    return SignedRequest(method, url, headers, body)
