"""One RFC 8693 token exchange as a client: the form chit's `/token` reads
(docs/reference/http-api.md "POST /token — request"), the credential it answers with, and that
credential written out in the shapes its consumers read."""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import shlex
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlencode

from chit.attestors.base import SubjectToken, printable
from chit.httpclient import Response, TransportError, request
from chit.protocol import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_AWS_CREDENTIALS, TOKEN_TYPE_JWT

# --token-type: the requested_token_type URNs by their short names.
TOKEN_TYPES = {
    "access_token": TOKEN_TYPE_ACCESS_TOKEN,
    "jwt": TOKEN_TYPE_JWT,
    "aws-credentials": TOKEN_TYPE_AWS_CREDENTIALS,
}
OUTPUTS = ("token", "json", "env", "credential-process")
REQUEST_TIMEOUT = 10.0
MAX_ANSWER_BYTES = 64 * 1024  # chit's answers are a few KB
AWS_CREDENTIAL_FIELDS = ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    """What the workload asks for; the subject token comes from a collector."""

    audience: tuple[str, ...] = ()
    scope: tuple[str, ...] = ()
    requested_token_type: str = TOKEN_TYPE_ACCESS_TOKEN

    def form(self, subject: SubjectToken) -> dict[str, Any]:
        form: dict[str, Any] = {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": subject.value,
            "subject_token_type": subject.token_type,
            "requested_token_type": self.requested_token_type,
        }
        if self.audience:
            form["audience"] = list(self.audience)  # repeated, RFC 8693 §2.1
        if self.scope:
            form["scope"] = " ".join(self.scope)
        return form

    def describe(self) -> str:
        """For log lines: what was asked for, never a token."""
        kind = next((name for name, urn in TOKEN_TYPES.items() if urn == self.requested_token_type), self.requested_token_type)
        parts = [kind]
        if self.audience:
            parts.append("for " + " ".join(self.audience))
        if self.scope:
            parts.append("scope " + " ".join(self.scope))
        return ", ".join(parts)


class ExchangeError(Exception):
    """An RFC 6749 §5.2 error: chit's answer, or the code chit would give for a
    failure on the way to it. `temporary` errors are worth retrying as they are."""

    def __init__(self, error: str, description: str, *, decision_id: str | None = None, retry_after: float | None = None, temporary: bool = False):
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.decision_id = decision_id
        self.retry_after = retry_after
        self.temporary = temporary

    def __str__(self) -> str:
        text = f"{self.error}: {self.description}"
        return text + (f" (decision_id {self.decision_id})" if self.decision_id else "")


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A successful exchange. `expires_at` is the earliest of the server's `expires_in`
    counted from when the request was sent and the credential's own expiry."""

    access_token: str = field(repr=False)
    issued_token_type: str
    token_type: str
    expires_in: int
    expires_at: float
    scope: str | None
    aws_credentials: Mapping[str, Any] | None = field(repr=False)
    response: Mapping[str, Any] = field(repr=False)


def _retry_after(response: Response) -> float | None:
    value = response.header("Retry-After") or ""
    return float(value) if value.isascii() and value.isdigit() else None


def _json(response: Response) -> Any:
    try:
        return json.loads(response.body)
    except (ValueError, RecursionError):
        return None


def _refusal(response: Response, url: str) -> ExchangeError:
    """chit's error response (RFC 6749 §5.2), or what stands in front of it answered."""
    temporary = response.status == 429 or response.status >= 500
    body = _json(response)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        decision_id = body.get("decision_id")
        return ExchangeError(
            printable(body["error"], 64),
            printable(str(body.get("error_description") or "no description")),
            decision_id=printable(decision_id, 64) if isinstance(decision_id, str) else None,
            retry_after=_retry_after(response),
            temporary=temporary,
        )
    error = "temporarily_unavailable" if temporary else "invalid_request"
    return ExchangeError(error, f"{url} answered HTTP {response.status} without an OAuth error", retry_after=_retry_after(response), temporary=temporary)


def _expiration(text: Any) -> float:
    """AWS's `Expiration`, ISO 8601 in UTC."""
    if not isinstance(text, str):
        raise ValueError("Expiration is not a string")
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def parse_issued(body: Any, requested_token_type: str, sent_at: float) -> IssuedCredential:
    """The 200 answer (docs/reference/http-api.md "POST /token — success"); ValueError if it is not one."""
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    access_token, expires_in = body.get("access_token"), body.get("expires_in")
    issued_token_type, token_type = body.get("issued_token_type"), body.get("token_type")
    if not isinstance(access_token, str) or not access_token:
        raise ValueError("no access_token")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
        raise ValueError("expires_in is not a positive integer")
    if not isinstance(token_type, str) or not isinstance(issued_token_type, str):
        raise ValueError("token_type or issued_token_type missing")
    if (issued_token_type == TOKEN_TYPE_AWS_CREDENTIALS) != (requested_token_type == TOKEN_TYPE_AWS_CREDENTIALS):
        raise ValueError(f"issued_token_type {issued_token_type} does not answer the request")
    expires_at = sent_at + expires_in
    aws_credentials = None
    if issued_token_type == TOKEN_TYPE_AWS_CREDENTIALS:
        aws_credentials = body.get("aws_credentials")
        if not isinstance(aws_credentials, dict) or not all(isinstance(aws_credentials.get(k), str) for k in AWS_CREDENTIAL_FIELDS):
            raise ValueError("aws_credentials incomplete")
        expires_at = min(expires_at, _expiration(aws_credentials["Expiration"]))
    else:
        exp = _unverified_expiry(access_token)
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            expires_at = min(expires_at, float(exp))
    scope = body.get("scope")
    return IssuedCredential(
        access_token=access_token,
        issued_token_type=issued_token_type,
        token_type=token_type,
        expires_in=expires_in,
        expires_at=expires_at,
        scope=scope if isinstance(scope, str) else None,
        aws_credentials=aws_credentials,
        response=body,
    )


def _unverified_expiry(token: str) -> Any:
    """The `exp` of a JWT, not verified (resource servers do that): it only decides when to renew."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("exp")
    except (IndexError, ValueError, binascii.Error, AttributeError, RecursionError):
        return None


def _file_version(path: Path) -> tuple[int, ...]:
    status = path.stat()
    return (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size)


class TokenEndpoint:
    """chit's `/token` under `server_url`; the subject token travels only there.

    Never through a proxy the environment names (HTTP_PROXY, HTTPS_PROXY,
    ALL_PROXY): clusters inject those for other traffic, and the subject token
    (and an instance's AWS nonce) would go to that proxy, in clear to an
    http:// chit. Only the `proxy` the caller chose is used (chit.httpclient
    reads no environment variable).

    TLS: chit's certificate must chain to a CA certificate in `ca_file`, else in
    `ca_dir`, else to the system's CAs (OpenSSL's default paths, which honour
    SSL_CERT_FILE and SSL_CERT_DIR). The CA file is read again when it changes:
    a CA bundle that a ConfigMap (trust-manager) updates while the agent runs,
    e.g. old and new CA during a rotation, is followed without a restart.
    """

    def __init__(
        self,
        server_url: str,
        *,
        timeout: float = REQUEST_TIMEOUT,
        ca_file: Path | None = None,
        ca_dir: Path | None = None,
        proxy: str | None = None,
    ):
        self.url = server_url.rstrip("/") + "/token"
        self.timeout = timeout
        self.ca_file = ca_file
        self.ca_dir = ca_dir
        self.proxy = proxy
        self._through = " through the proxy" if proxy else ""
        self._ca_version: tuple[int, ...] | None = None
        self._context = self._tls_context()

    def _tls_context(self) -> ssl.SSLContext:
        """A context verifying against `ca_file` as it is now; ValueError naming the file if it cannot be used."""
        if self.ca_file is None:
            return ssl.create_default_context(capath=str(self.ca_dir) if self.ca_dir else None)
        try:
            version = _file_version(self.ca_file)
            context = ssl.create_default_context(cafile=str(self.ca_file))
        except ssl.SSLError:
            raise ValueError(f"{self.ca_file}: no PEM CA certificate in it") from None
        except OSError as error:
            raise ValueError(f"{self.ca_file}: {error.strerror}") from None
        self._ca_version = version
        return context

    def _follow_ca_file(self) -> None:
        """Before each exchange: a CA file that changed since it was read is read again."""
        if self.ca_file is None:
            return
        try:
            unchanged = _file_version(self.ca_file) == self._ca_version
        except OSError:
            unchanged = False  # _tls_context() names what is wrong with it
        if unchanged:
            return
        try:
            self._context = self._tls_context()
        except ValueError as error:
            raise ExchangeError("invalid_request", f"CA file {error}") from None

    def exchange(self, subject: SubjectToken, request: ExchangeRequest) -> IssuedCredential:
        self._follow_ca_file()
        sent_at = time.time()
        try:
            response = _post(self.url, urlencode(request.form(subject), doseq=True).encode(), self.timeout, self._context, self.proxy)
        except TransportError as error:
            if isinstance(error.tls, ssl.SSLCertVerificationError):
                # Not worth retrying as it is: the CA file or chit's certificate must change first.
                trusted = f"the CA certificates in {self.ca_file}" if self.ca_file else "the system's CAs (set --ca-file or $CHIT_CA_FILE)"
                raise ExchangeError("invalid_request", f"{self.url}: chit's TLS certificate is not trusted: {error.tls.verify_message}; checked against {trusted}") from None
            if error.tls is not None:
                raise ExchangeError("temporarily_unavailable", f"{self.url}: the TLS handshake failed ({error})", temporary=True) from None
            raise ExchangeError("temporarily_unavailable", f"{self.url} did not answer{self._through} ({error})", temporary=True) from None
        except ValueError as error:  # an answer over the size bound
            raise ExchangeError("temporarily_unavailable", str(error), temporary=True) from None
        if response.status != 200:
            raise _refusal(response, self.url)
        try:
            return parse_issued(_json(response), request.requested_token_type, sent_at)
        except ValueError as error:
            raise ExchangeError("server_error", f"{self.url} answered 200 without a usable credential: {error}", temporary=True) from None

    def close(self) -> None:
        return None  # a connection per exchange: nothing is kept open


def _post(url: str, form: bytes, timeout: float, context: ssl.SSLContext, proxy: str | None) -> Response:
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json", "User-Agent": "chit-agent"}
    return request("POST", url, headers=headers, body=form, connect_timeout=timeout, read_timeout=timeout, context=context, proxy=proxy, max_bytes=MAX_ANSWER_BYTES)


# --- the shapes a credential is written in ---------------------------------------------------


def render(credential: IssuedCredential, output: str) -> str:
    """`token`: the access token alone; `json`: chit's answer plus `expires_at` (Unix
    seconds); `env`: shell `export` lines; `credential-process`: the JSON AWS SDKs
    read from a credential_process."""
    if output == "token":
        return credential.access_token
    if output == "json":
        return json.dumps({**credential.response, "expires_at": int(credential.expires_at)})
    aws = credential.aws_credentials
    if output == "credential-process":
        if aws is None:
            raise ValueError("credential-process output needs aws-credentials")
        return json.dumps({"Version": 1, **{k: aws[k] for k in AWS_CREDENTIAL_FIELDS}})
    if output == "env":
        if aws is not None:
            variables = {
                "AWS_ACCESS_KEY_ID": aws["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": aws["SecretAccessKey"],
                "AWS_SESSION_TOKEN": aws["SessionToken"],
                "AWS_CREDENTIAL_EXPIRATION": aws["Expiration"],
            }
        else:
            variables = {"CHIT_ACCESS_TOKEN": credential.access_token, "CHIT_TOKEN_EXPIRES_AT": str(int(credential.expires_at))}
        return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in variables.items())
    raise ValueError(f"unknown output {output!r}")
