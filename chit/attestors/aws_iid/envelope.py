"""The aws-iid subject token: `base64url(JSON {document, signature | rsa2048, nonce})`,
with or without padding (docs/reference/http-api.md "POST /token — request"). The agent encodes
it; the server parses it before anything is verified.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Literal

from chit.attestors.base import InvalidEvidence, evidence_object


SIGNATURE_FORMS = ("signature", "rsa2048")
Form = Literal["signature", "rsa2048"]
MAX_SUBJECT_TOKEN_LENGTH = 16 * 1024
MAX_DOCUMENT_LENGTH = 8 * 1024
# docs/operators/aws.md "AWS nonce": 16–128 printable ASCII characters, no space.
NONCE = re.compile(r"[!-~]{16,128}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_WHITESPACE = re.compile(rb"\s+")


@dataclass(frozen=True, slots=True)
class IidEvidence:
    """A decoded subject token; nothing in it is verified yet."""

    document: bytes
    form: Form
    signature: bytes
    nonce: str


def _standard_base64(text: str, what: str) -> bytes:
    """The signature as IMDS serves it: standard base64, line breaks ignored."""
    compact = _WHITESPACE.sub(b"", text.encode("ascii", errors="replace"))
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEvidence(f"{what} is not base64") from None


def parse_subject_token(subject_token: str) -> IidEvidence:
    """base64url(JSON {document, signature | rsa2048, nonce}), with or without padding."""
    if len(subject_token) > MAX_SUBJECT_TOKEN_LENGTH:
        raise InvalidEvidence(f"subject token longer than {MAX_SUBJECT_TOKEN_LENGTH} characters")
    stripped = subject_token.rstrip("=")
    padding_length = len(subject_token) - len(stripped)
    if (
        not _BASE64URL.fullmatch(stripped)
        or len(stripped) % 4 == 1
        or padding_length > 2
        or (padding_length and len(subject_token) % 4)
    ):
        raise InvalidEvidence("subject token is not base64url")
    try:
        raw = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise InvalidEvidence("subject token is not base64url") from None
    body = evidence_object(raw, "subject token")
    if "pkcs7" in body:
        raise InvalidEvidence("the DSA/SHA-1 pkcs7 signature is not accepted; send signature or rsa2048")
    unknown = set(body) - {"document", "nonce", *SIGNATURE_FORMS}
    if unknown:
        raise InvalidEvidence(f"subject token has unknown members: {', '.join(sorted(unknown))}")
    forms = [form for form in SIGNATURE_FORMS if form in body]
    if len(forms) != 1:
        raise InvalidEvidence("subject token needs exactly one of signature, rsa2048")
    form: Form = forms[0]  # type: ignore[assignment]
    document, signature, nonce = body.get("document"), body[form], body.get("nonce")
    if not isinstance(document, str) or not document:
        raise InvalidEvidence("document missing")
    if len(document) > MAX_DOCUMENT_LENGTH:
        raise InvalidEvidence("document too large")
    if not isinstance(signature, str) or not signature:
        raise InvalidEvidence(f"{form} missing")
    if nonce is None:
        raise InvalidEvidence("nonce missing: every exchange of an instance identity document needs its nonce")
    if not isinstance(nonce, str) or not NONCE.fullmatch(nonce):
        raise InvalidEvidence("nonce must be 16-128 printable ASCII characters without spaces")
    try:
        document_bytes = document.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in the token's JSON
        raise InvalidEvidence("document is not valid UTF-8") from None
    return IidEvidence(document_bytes, form, _standard_base64(signature, form), nonce)


def encode_subject_token(document: str, nonce: str, *, signature: str | None = None, rsa2048: str | None = None) -> str:
    """The subject token a collector sends: the IMDS bodies untouched, plus the nonce."""
    body: dict[str, str] = {"document": document, "nonce": nonce}
    if signature is not None:
        body["signature"] = signature
    if rsa2048 is not None:
        body["rsa2048"] = rsa2048
    return base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
