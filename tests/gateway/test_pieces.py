"""The gateway's pieces in process, under generated inputs: the redactor catches the key
wherever chunk boundaries fall; the usage meters read each provider's report from a
stream cut anywhere; the path checks refuse what could mean something else upstream;
the header rules drop every credential and hop-by-hop header; access tokens of each of
chit's key series."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from chit.attestors.jwks import FileKeySource
from chit.gateway.config import Route
from chit.gateway.errors import AccessDenied, InvalidRequest, InvalidToken, NotFound
from chit.gateway.forwarding import client_headers, upstream_headers
from chit.gateway.redaction import REDACTED, Redactor
from chit.gateway.routes import RouteTable, refuse_ambiguous_path, requested_model, upstream_query
from chit.gateway.tokens import AccessTokenVerifier
from chit.gateway.usage import SseUsage, UsageMeter

KEY = "sk-proj-Ab0_9-zZ"


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["x", "s", "sk-", "sk-proj", KEY, KEY[:-1], "\n\n", "data: ", "[", "]"]), max_size=30),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_the_key_is_redacted_wherever_chunks_are_cut(pieces: list[str], points: list[int]) -> None:
    data = "".join(pieces).encode()
    redactor = Redactor(KEY)
    sent = b"".join(redactor.feed(chunk) for chunk in cut(data, points)) + redactor.flush()
    assert sent == data.replace(KEY.encode(), REDACTED.encode())
    assert KEY.encode() not in sent


def test_an_event_is_never_held_back() -> None:
    """Only what could be the start of the key waits for the next chunk."""
    redactor = Redactor(KEY)
    assert redactor.feed(b'data: {"text": "hi"}\n\n') == b'data: {"text": "hi"}\n\n'
    assert redactor.feed(b"data: sk-pr") == b"data: "
    assert redactor.feed(b"oj-Ab0_9-zZ!") == b"[REDACTED]!"


ANTHROPIC_STREAM = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in [
    {"type": "message_start", "message": {"usage": {"input_tokens": 25, "output_tokens": 1}}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "usage: 999"}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}},
    {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 40}},
    {"type": "message_stop"},
])
OPENAI_STREAM = (b'data: {"choices":[{"delta":{"content":"hi"}}]}\r\n\r\n'
                 b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}\r\n\r\n'
                 b"data: [DONE]\r\n\r\n")
OPENAI_RESPONSES_STREAM = (b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n'
                           b'event: response.completed\ndata: {"type":"response.completed","response":'
                           b'{"usage":{"input_tokens":9,"output_tokens":3,"total_tokens":12}}}\n\n')
GEMINI_STREAM = b"".join(b"data: " + json.dumps({"usageMetadata": {"totalTokenCount": n}}).encode() + b"\r\n\r\n" for n in (11, 14, 30))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=10))
@pytest.mark.parametrize("provider, stream, tokens", [
    ("anthropic", ANTHROPIC_STREAM, 65), ("openai", OPENAI_STREAM, 12), ("openai", OPENAI_RESPONSES_STREAM, 12),
    ("gemini", GEMINI_STREAM, 30),
])
def test_streamed_usage_is_read_wherever_chunks_are_cut(provider: str, stream: bytes, tokens: int, points: list[int]) -> None:
    usage = SseUsage(UsageMeter(provider))
    for chunk in cut(stream, points):
        usage.feed(chunk)
    usage.end()
    assert usage.meter.tokens == tokens


def test_usage_that_is_not_a_count_counts_nothing() -> None:
    meter = UsageMeter("openai")
    for usage in ({"total_tokens": True}, {"total_tokens": -1}, {"total_tokens": 2**60}, {"total_tokens": "12"}, None):
        meter.observe({"usage": usage})
    assert meter.tokens is None


@pytest.mark.parametrize("path", ["/v1/../admin", "/v1/./x", "/v1//x", "/v1/%2e%2e/x", "/v1/a%2Fb", "/v1/a%5cb", "/v1/%00",
                                  "/v1/a%zz", "/v1/a b", "/v1/a\\b", "/v1/ä", "", "v1"])
def test_ambiguous_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidRequest):
        refuse_ambiguous_path(path)


def route(**extra: object) -> Route:
    return Route.model_validate({
        "name": "gemini", "prefix": "/gemini", "upstream": "https://generativelanguage.googleapis.com",
        "inject": {"header": "x-goog-api-key"}, "key": {"file": "/k"}, "scope": "llm:gemini",
        "paths": ["/v1beta/models/*", "/v1/files/**"], "provider": "gemini", "models": ["gemini-2.5-flash"], **extra})


def test_routes_match_whole_segments_and_their_patterns() -> None:
    table = RouteTable([route(), route(name="other", prefix="/gemini/v2", paths=["/x"])])
    assert table.route("/gemini/v2/x").name == "other"  # the longest prefix
    assert table.route("/gemini/v1beta/models/m:generateContent").name == "gemini"
    with pytest.raises(NotFound):
        table.route("/geminix/v1")
    gemini = table.route("/gemini/v1")
    assert table.admit(gemini, "POST", "/gemini/v1beta/models/gemini-2.5-flash:generateContent", "").path.endswith(":generateContent")
    assert table.admit(gemini, "POST", "/gemini/v1/files/a/b/c", "")
    assert table.admit(gemini, "POST", "/gemini/v1/files", "")  # `/**`: no further segment is any number too
    for refused in ("/gemini/v1beta/models/a/b", "/gemini/v1beta/tunedModels/x", "/gemini/v1/filesx", "/gemini/v1/x/files"):
        with pytest.raises(AccessDenied):
            table.admit(gemini, "POST", refused, "")


def test_gemini_models_are_read_from_the_path_and_its_key_parameter_dropped() -> None:
    assert requested_model(route(), "/v1beta/models/gemini-2.5-flash:streamGenerateContent", b"")[0] == "gemini-2.5-flash"
    with pytest.raises(AccessDenied):
        requested_model(route(), "/v1beta/models/gemini-2.5-pro:generateContent", b"")
    assert upstream_query(route(), "alt=sse&key=AIzaClientChosen&key=x") == "alt=sse"
    assert upstream_query(route(), "alt=sse") == "alt=sse"


def test_no_client_credential_and_no_hop_by_hop_header_is_forwarded() -> None:
    custom = route(inject={"header": "x-service-key", "scheme": "Token"})
    received = [("Authorization", "Bearer chit"), ("X-Api-Key", "chit"), ("x-goog-api-key", "chit"), ("x-service-key", "chit"),
                ("Connection", "keep-alive, X-Secret"), ("x-secret", "1"), ("TE", "trailers"), ("Transfer-Encoding", "chunked"),
                ("Host", "evil.example"), ("Accept-Encoding", "gzip"), ("Proxy-Authorization", "Basic x"), ("x-request-id", "42")]
    forwarded = upstream_headers(received, custom, "sk-upstream")
    assert forwarded == [("x-request-id", "42"), ("accept-encoding", "identity"), ("x-service-key", "Token sk-upstream")]
    answered = client_headers([("Content-Length", "9"), ("Content-Encoding", "gzip"), ("x-debug", "key=sk-upstream"),
                               ("Connection", "close, x-hop"), ("x-hop", "1"), ("set-cookie", "a=1"), ("set-cookie", "b=2")],
                              "sk-upstream")
    assert answered == [("x-debug", "key=[REDACTED]"), ("set-cookie", "a=1"), ("set-cookie", "b=2")]


def test_chit_tokens_of_each_key_series_the_gateway_reads(tmp_path: Path) -> None:
    """chit keeps key series per algorithm (`signing.algorithms`, `tokens.audiences`): the
    gateway verifies ES256 and RS256 tokens, each with its own key's algorithm; an EdDSA
    key is skipped from the JWKS, so its tokens are refused (401), never a 500."""
    keys = {"ES256": (ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
            "RS256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
            "EdDSA": (ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm)}
    jwks = {"keys": [{**json.loads(kind.to_jwk(key.public_key())), "kid": alg, "use": "sig"} for alg, (key, kind) in keys.items()]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    verifier = AccessTokenVerifier("https://chit.test", "https://gateway.test", FileKeySource(tmp_path / "jwks.json"))
    now = time.time()
    claims = {"iss": "https://chit.test", "sub": "spiffe://chit.test/agent", "aud": "https://gateway.test", "scope": "llm:openai",
              "iat": int(now), "exp": int(now) + 300, "jti": "j"}

    def token(alg: str, signed_as: str | None = None) -> str:
        return jwt.encode(claims, keys[alg][0], algorithm=signed_as or alg, headers={"kid": alg, "typ": "at+jwt"})

    for alg in ("ES256", "RS256"):
        assert asyncio.run(verifier.verify(token(alg), now)).subject == "spiffe://chit.test/agent"
    with pytest.raises(InvalidToken):
        asyncio.run(verifier.verify(token("EdDSA"), now))
    with pytest.raises(InvalidToken):  # the RSA key, but the token says PS256: the algorithm is the key's
        asyncio.run(verifier.verify(token("RS256", "PS256"), now))
