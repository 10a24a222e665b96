"""Every check of a signed GetCallerIdentity request, made before it goes anywhere.

The request is forwarded only if it is exactly what chit expects: a POST to one
of the configured STS endpoints (never a host the request names), the body
`Action=GetCallerIdentity&Version=2011-06-15` and nothing else, only the headers
a SigV4-signed STS call needs, signed with AWS4-HMAC-SHA256 for the `sts`
service over the header naming this chit server, and dated within 15 minutes.
STS itself checks the signature (AWS SigV4: "the request must reach AWS within
five minutes of the time stamp in the request", and STS answers
`SignatureDoesNotMatch` or `RequestExpired` otherwise); chit bounds what it
will forward and accepts each signature once.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from chit.attestors.aws_iam import GET_CALLER_IDENTITY, SERVER_ID_HEADER
from chit.attestors.aws_iam.envelope import SignedRequest
from chit.attestors.base import InvalidEvidence

MAX_SKEW_SECONDS = 15 * 60
# The headers a signed STS Query API call carries; Host is checked, then set by chit's client.
ALLOWED_HEADERS = frozenset({"authorization", "x-amz-date", "x-amz-security-token", "content-type", "host", SERVER_ID_HEADER.lower()})
REQUIRED_SIGNED = ("host", "x-amz-date", SERVER_ID_HEADER.lower())
CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8"})
# AWS SigV4 (Authorization header form): the algorithm, then Credential, SignedHeaders, Signature.
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[A-Z0-9]{16,128})/(?P<date>\d{8})/(?P<region>[a-z0-9-]{1,32})/(?P<service>[a-z0-9-]{1,32})/aws4_request,"
    r" ?SignedHeaders=(?P<signed>[a-z0-9-]+(?:;[a-z0-9-]+)*), ?Signature=(?P<signature>[0-9a-f]{64})"
)
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")  # visible ASCII and spaces: no CR, LF or other control


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """A request fit to forward: where to (the configured endpoint), what, and the facts
    the checks established."""

    endpoint: str
    headers: Mapping[str, str] = field(repr=False)  # without Host (the client sets the endpoint's)
    body: str
    signature: str  # hex, the replay key (not secret: it is in every request STS sees)
    signed_at: float


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((value for key, value in headers.items() if key.lower() == name), None)


def check_request(request: SignedRequest, endpoints: frozenset[str], server_id: str, now: float) -> CheckedRequest:
    if request.method != "POST":
        raise InvalidEvidence("aws-iam request: the method must be POST")
    if request.url not in endpoints:
        raise InvalidEvidence("aws-iam request: the URL is not an STS endpoint this server accepts")
    if request.body != GET_CALLER_IDENTITY:
        raise InvalidEvidence(f"aws-iam request: the body must be exactly {GET_CALLER_IDENTITY}")
    for name, value in request.headers.items():
        if not _HEADER_NAME.fullmatch(name) or name.lower() not in ALLOWED_HEADERS:
            raise InvalidEvidence(f"aws-iam request: header {name[:64]!r} is not accepted")
        if not _HEADER_VALUE.fullmatch(value):
            raise InvalidEvidence(f"aws-iam request: header {name} has a control character")
    headers = request.headers
    host = _header(headers, "host")
    if host is not None and host.lower() != urlsplit(request.url).netloc.lower():
        raise InvalidEvidence("aws-iam request: the Host header is not the endpoint's")
    content_type = _header(headers, "content-type")
    if content_type is None or content_type.lower() not in CONTENT_TYPES:
        raise InvalidEvidence("aws-iam request: Content-Type must be application/x-www-form-urlencoded")
    if _header(headers, SERVER_ID_HEADER.lower()) != server_id:
        raise InvalidEvidence(f"aws-iam request: {SERVER_ID_HEADER} is missing or names another server")
    match = _AUTHORIZATION.fullmatch(_header(headers, "authorization") or "")
    if match is None:
        raise InvalidEvidence("aws-iam request: Authorization is not an AWS4-HMAC-SHA256 signature")
    if match["service"] != "sts":
        raise InvalidEvidence("aws-iam request: signed for another service than sts")
    signed = set(match["signed"].split(";"))
    missing = [name for name in REQUIRED_SIGNED if name not in signed]
    if missing:
        raise InvalidEvidence(f"aws-iam request: {', '.join(missing)} not signed")
    unsent = sorted(name for name in signed - {"host"} if _header(headers, name) is None)
    if unsent:
        raise InvalidEvidence(f"aws-iam request: signed headers not sent: {', '.join(unsent)}")
    signed_at = _amz_date(_header(headers, "x-amz-date") or "")
    if match["date"] != (_header(headers, "x-amz-date") or "")[:8]:
        raise InvalidEvidence("aws-iam request: the credential scope's date is not X-Amz-Date's")
    if abs(now - signed_at) > MAX_SKEW_SECONDS:
        raise InvalidEvidence("aws-iam request: X-Amz-Date is more than 15 minutes from now")
    forwarded = {name: value for name, value in headers.items() if name.lower() != "host"}
    return CheckedRequest(request.url, forwarded, request.body, match["signature"], signed_at)


def _amz_date(value: str) -> float:
    """ISO 8601 basic format in UTC, `20260115T141211Z`, as SigV4 writes X-Amz-Date."""
    if not _AMZ_DATE.fullmatch(value):
        raise InvalidEvidence("aws-iam request: X-Amz-Date missing or not YYYYMMDDTHHMMSSZ")
    try:
        return float(calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise InvalidEvidence("aws-iam request: X-Amz-Date is not a date") from None
