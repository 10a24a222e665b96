"""The checked request sent to STS, and STS's answer read strictly.

chit sends it to the configured endpoint with its own HTTP client: TLS verified,
no proxy from the environment, no redirects, bounded in time and in size. STS
answering 200 with a GetCallerIdentityResponse is the verified fact; a 4xx is
STS refusing the request (a bad or expired signature, unknown credentials: the
evidence is invalid, 400); no answer, a 5xx, a redirect or an answer chit
cannot read means the check could not be made (503).

The answer is XML (the STS Query API). A document with a DOCTYPE is refused
before it is parsed: no DTD, so no entity can be defined or expanded
(`xml.etree` would otherwise expand internal entities).
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import httpx

from chit.attestors.aws_iam.request import CheckedRequest
from chit.attestors.base import EvidenceUnavailable, InvalidEvidence
from chit.bounded import BodyTooLarge, read_bounded

MAX_ANSWER_BYTES = 16 * 1024
NAMESPACE = "{https://sts.amazonaws.com/doc/2011-06-15/}"
_ERROR_CODE = re.compile(r"[A-Za-z.]{1,64}")


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """GetCallerIdentityResult: the caller's ARN, its account, its unique user id."""

    arn: str
    account: str
    user_id: str


def sts_client(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False, headers={"User-Agent": "chit"})


async def get_caller_identity(client: httpx.AsyncClient, request: CheckedRequest, timeout: float) -> CallerIdentity:
    """POST the request to its endpoint; `timeout` bounds the whole call, answer included."""
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", request.endpoint, headers=dict(request.headers), content=request.body.encode()) as response:
                status = response.status_code
                body = await read_bounded(response.aiter_bytes(), MAX_ANSWER_BYTES, request.endpoint)
    except TimeoutError:
        raise EvidenceUnavailable(f"STS ({request.endpoint}): no answer within {timeout:.1f} s") from None
    except BodyTooLarge:
        raise EvidenceUnavailable(f"STS ({request.endpoint}) answered more than {MAX_ANSWER_BYTES} bytes") from None
    except httpx.HTTPError as error:
        raise EvidenceUnavailable(f"STS ({request.endpoint}): {type(error).__name__}") from None
    if 400 <= status < 500:
        raise InvalidEvidence(f"STS refused the signed request: HTTP {status} {error_code(body)}".rstrip())
    if status != 200:
        raise EvidenceUnavailable(f"STS ({request.endpoint}) answered HTTP {status}")
    return parse_answer(body)


def _parse(body: bytes) -> ElementTree.Element:
    """An XML document without DTD; ValueError if it is not one."""
    if b"<!" in body:  # <!DOCTYPE, <!ENTITY, and CDATA: nothing STS writes
        raise ValueError("a DOCTYPE or other declaration")
    try:
        return ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise ValueError("not well-formed XML") from None


def error_code(body: bytes) -> str:
    """STS's error code (`SignatureDoesNotMatch`, `ExpiredToken`, …), if its answer names a plain one."""
    try:
        code = _parse(body).find(f"{NAMESPACE}Error/{NAMESPACE}Code")
    except ValueError:
        return ""
    text = code.text if code is not None else None
    return text if text is not None and _ERROR_CODE.fullmatch(text) else ""


def _one(result: ElementTree.Element, name: str) -> str:
    found = result.findall(f"{NAMESPACE}{name}")
    if len(found) != 1 or not found[0].text or len(found[0]) or len(found[0].text) > 2048:
        raise EvidenceUnavailable(f"STS's answer has no single {name}")
    return found[0].text


def parse_answer(body: bytes) -> CallerIdentity:
    """`<GetCallerIdentityResponse><GetCallerIdentityResult><Arn/><UserId/><Account/>…`, each once."""
    try:
        root = _parse(body)
    except ValueError as error:
        raise EvidenceUnavailable(f"STS's answer is not a GetCallerIdentityResponse: {error}") from None
    results = root.findall(f"{NAMESPACE}GetCallerIdentityResult")
    if root.tag != f"{NAMESPACE}GetCallerIdentityResponse" or len(results) != 1:
        raise EvidenceUnavailable("STS's answer is not a GetCallerIdentityResponse")
    result = results[0]
    return CallerIdentity(arn=_one(result, "Arn"), account=_one(result, "Account"), user_id=_one(result, "UserId"))
