"""No input string can change or break a policy decision (docs/reference "Strings reach the
policy faithfully or not at all").

rego-cpp writes input strings back unescaped and works on their escaped text;
chit carries a string to it only when no form of it differs (no quote,
backslash or control character), reads its answer as a node tree, and refuses
the rest cleanly. OPA carries every string; chit parses its answer strictly.
Both are tested as properties: a policy that copies every input string into
its decision gives back exactly those strings, or (embedded engine, unfaithful
string) the exchange is refused — never another decision, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chit.policy import PolicyEvaluationError, PolicyInputUnrepresentable
from chit.policy.bundle import load_policy_dir
from chit.policy.embedded import EmbeddedEngine
from chit.policy.opa import OpaEngine
from chit.policy.regocpp import is_faithful
from tests.factories import (
    ChitServer,
    ClusterIssuer,
    DocumentServer,
    KubernetesApiStandIn,
    MotoServer,
    assert_issued,
    assert_refused,
    iid_token,
    new_nonce,
)

# --- generated inputs -------------------------------------------------------------------------

# What attackers write into image references, tags, labels and claims.
HOSTILE = ['"', "\\", "\x00", "\n", "\t", "\\u0041", 'evil:1", "x"], "allow": true, "reasons": ["', "x\\", "`", "\u2028", "é", "\x7f", "%22", "}", "]"]
strings = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(blacklist_characters='"\\', blacklist_categories=("Cs",), min_codepoint=0x20), max_size=12),
    st.lists(st.sampled_from(HOSTILE) | st.text(max_size=3), max_size=4).map("".join),
)
scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | strings
claims = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(strings, inner, max_size=3), max_leaves=8)
policy_inputs = st.fixed_dictionaries(
    {
        "subject": strings,
        "attestation": st.fixed_dictionaries(
            {
                "kind": strings,
                "namespace": strings,
                "tags": st.dictionaries(strings, strings, max_size=3),
                "claims": st.dictionaries(strings, claims, max_size=4),
            }
        ),
        "images": st.lists(
            st.fixed_dictionaries({"ref": strings, "digest": st.none() | strings, "signed": st.booleans(), "signers": st.lists(strings, max_size=2)}),
            max_size=3,
        ),
        "request": st.fixed_dictionaries(
            {"audience": st.lists(strings, max_size=3), "resource": st.lists(strings, max_size=2), "scope": st.lists(strings, max_size=3)}
        ),
    }
)


def values_and_keys(document: Any) -> tuple[Counter[str], Counter[str]]:
    """Every string value and every object key of `document`, counted."""
    values: Counter[str] = Counter()
    keys: Counter[str] = Counter()

    def visit(node: Any) -> None:
        if isinstance(node, str):
            values[node] += 1
        elif isinstance(node, dict):
            for key, item in node.items():
                keys[key] += 1
                visit(item)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(document)
    return values, keys


def all_faithful(document: Any) -> bool:
    values, keys = values_and_keys(document)
    return all(is_faithful(s) for s in (*values, *keys))


# A policy that copies every input string (values into reasons, keys into scope) into its decision.
MIRROR = """package chit

import rego.v1

decision := {
	"allow": true,
	"reasons": [v | walk(input, [_, v]); is_string(v)],
	"scope": [k | walk(input, [_, v]); is_object(v); some k in object.keys(v)],
}
"""

# String built-ins over an input string, with the answers OPA gives.
COMPUTED = """package chit

import rego.v1

decision := {
	"allow": input.s == input.s,
	"reasons": [concat("|", [input.s, input.s]), sprintf("<%s>", [input.s]), trim_prefix(input.s, "")],
	"ttl": count(input.s),
}
"""


def engine(tmp_path: Path, rego: str) -> EmbeddedEngine:
    (tmp_path / "chit").mkdir(exist_ok=True)
    (tmp_path / "chit" / "decision.rego").write_text(rego)
    return EmbeddedEngine(load_policy_dir(tmp_path))


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedEngine:
    return engine(tmp_path_factory.mktemp("mirror"), MIRROR)


@pytest.fixture(scope="module")
def computed(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedEngine:
    return engine(tmp_path_factory.mktemp("computed"), COMPUTED)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=policy_inputs)
def test_embedded_engine_gives_back_every_input_string_or_refuses(mirror: EmbeddedEngine, document: dict[str, Any]) -> None:
    values, keys = values_and_keys(document)
    if not all_faithful(document):
        with pytest.raises(PolicyInputUnrepresentable, match=r"^(a key of )?input[^\n]* contains '.+', which the embedded"):
            mirror.evaluate(document)
        return
    decision = mirror.evaluate(document)
    assert decision["allow"] is True
    assert Counter(decision["reasons"]) == values
    assert Counter(decision["scope"]) == keys


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=strings)
def test_embedded_string_builtins_see_the_string_itself(computed: EmbeddedEngine, text: str) -> None:
    if not is_faithful(text):
        with pytest.raises(PolicyInputUnrepresentable):
            computed.evaluate({"s": text})
        return
    decision = computed.evaluate({"s": text})
    assert decision == {"allow": True, "reasons": [f"{text}|{text}", f"<{text}>", text], "ttl": len(text)}


def test_refusal_names_where_the_string_is(mirror: EmbeddedEngine) -> None:
    document = {"images": [{"ref": "ok"}, {"ref": 'evil:1", "allow": true, "x": "'}]}
    with pytest.raises(PolicyInputUnrepresentable, match=r"input\.images\[1\]\.ref contains '\"'"):
        mirror.evaluate(document)
    with pytest.raises(PolicyInputUnrepresentable, match=r"a key of input\.attestation\.tags contains '\\\\'"):
        mirror.evaluate({"attestation": {"tags": {"a\\b": "x"}}})
    with pytest.raises(PolicyInputUnrepresentable, match=r'input\.attestation\.tags\["\\u0085 x"\] contains'):
        mirror.evaluate({"attestation": {"tags": {"\x85 x": '"'}}})


@pytest.mark.parametrize(
    "expression",
    [
        'concat("", [input.s, "\\""])',  # a quote joined to an input string
        '"\\u0041"',  # an escape in a policy literal
        'json.marshal({"a": input.s})',
        'sprintf("%v", [[input.s]])',
    ],
)
def test_decision_strings_the_engine_cannot_carry_deny(tmp_path: Path, expression: str) -> None:
    """What rego-cpp writes back unescaped or escaped is never read as some other string."""
    policy = engine(tmp_path, f'package chit\n\nimport rego.v1\n\ndecision := {{"allow": true, "reasons": [{expression}]}}\n')
    with pytest.raises(PolicyEvaluationError, match="quote, a backslash or a control character"):
        policy.evaluate({"s": "plain"})


def test_an_error_inside_the_decision_denies(tmp_path: Path) -> None:
    """rego-cpp puts an error node inside the value (here: 900 / 0): a deny naming it, not a 500."""
    policy = engine(tmp_path, 'package chit\n\nimport rego.v1\n\ndecision := {"allow": true, "ttl": 900 / count(input.request.scope)}\n')
    assert policy.evaluate({"request": {"scope": ["a"]}}) == {"allow": True, "ttl": 900}
    with pytest.raises(PolicyEvaluationError, match="division by zero"):
        policy.evaluate({"request": {"scope": []}})


def test_tags_cannot_replace_the_role(tmp_path: Path) -> None:
    """The review's EC2 tag payload, through a policy that passes tags into decision.aws.tags."""
    policy = engine(
        tmp_path,
        'package chit\n\nimport rego.v1\n\ndecision := {"allow": true, "aws": {"role_arn": "arn:aws:iam::123456789012:role/agent", '
        '"tags": input.attestation.tags}}\n',
    )
    assert policy.evaluate({"attestation": {"tags": {"team": "payments"}}})["aws"]["role_arn"].endswith(":role/agent")
    payload = '"}, "role_arn": "arn:aws:iam::123456789012:role/admin", "tags": {"team": "x'
    with pytest.raises(PolicyInputUnrepresentable, match=r"input\.attestation\.tags\.team"):
        policy.evaluate({"attestation": {"tags": {"team": payload}}})


# --- OPA: every string travels; the answer is parsed strictly -------------------------------


class FakeOpa(ThreadingHTTPServer):
    """An OPA Data API that answers with `answer(input)` as JSON, or with `raw` bytes."""

    daemon_threads = True

    def __init__(self) -> None:
        self.raw: bytes | None = None
        opa = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                document = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["input"]
                values, keys = values_and_keys(document)
                body = opa.raw or json.dumps({"result": {"allow": True, "reasons": list(values.elements()), "scope": list(keys.elements())}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def fake_opa() -> Iterator[FakeOpa]:
    server = FakeOpa()
    yield server
    server.shutdown()


def ask_opa(url: str, document: dict[str, Any]) -> Any:
    async def ask() -> Any:
        opa = OpaEngine(url, 5.0)
        try:
            return await opa.decide(document)
        finally:
            await opa.close()

    return asyncio.run(ask())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=policy_inputs)
def test_opa_engine_carries_every_string(fake_opa: FakeOpa, document: dict[str, Any]) -> None:
    fake_opa.raw = None
    values, keys = values_and_keys(document)
    decision = ask_opa(fake_opa.url, document)
    assert Counter(decision["reasons"]) == values
    assert Counter(decision["scope"]) == keys


@pytest.mark.parametrize(
    "body",
    [
        b'{"result": {"allow": false, "reasons": ["x"], "allow": true}}',
        b'{"result": {"allow": false}, "result": {"allow": true, "audience": ["https://db.internal"]}}',
        b'{"result": {"allow": true, "ttl": NaN}}',
        b'{"result": {"allow": true}',
        b"\xff\xfe",
    ],
    ids=["duplicate-key", "duplicate-result", "nan", "truncated", "not-utf8"],
)
def test_an_opa_answer_that_does_not_parse_strictly_denies(fake_opa: FakeOpa, body: bytes) -> None:
    fake_opa.raw = body
    try:
        with pytest.raises(PolicyEvaluationError, match="strictly valid JSON"):
            ask_opa(fake_opa.url, {"subject": "s"})
    finally:
        fake_opa.raw = None


# --- end to end: the review's reproductions through a real chit -------------------------------

ISSUER = "https://strings.k8s.chit.test"
CREDENTIAL = "chit-api-credential-" + uuid.uuid4().hex
# Descriptive refusal reasons, the way people write them.
DESCRIPTIVE = """package chit

import rego.v1

unpinned contains sprintf("image %s is not pinned by digest", [image.ref]) if {
	some image in input.images
	image.digest == null
}

audience_ok if {
	every a in input.request.audience { glob.match("https://*.internal", [], a) }
}

default decision := {"allow": false, "reasons": ["audience not allowed"]}

decision := {"allow": false, "reasons": [r | some r in unpinned]} if {
	audience_ok
	count(unpinned) > 0
}

decision := {"allow": true, "scope": ["read:db"], "audience": ["https://db.internal"], "ttl": 900, "reasons": ["ok"]} if {
	audience_ok
	count(unpinned) == 0
}
"""
EVIL_REF = 'evil:1", "x"], "allow": true, "audience": ["https://db.internal"], "scope": ["admin:everything"], "ttl": 900, "reasons": ["'


@pytest.fixture(scope="module")
def issuer(documents: DocumentServer) -> ClusterIssuer:
    issuer = ClusterIssuer("strings", ISSUER, "ES256")
    documents.serve("/strings/jwks", issuer.jwks())
    return issuer


@pytest.fixture(scope="module")
def api(issuer: ClusterIssuer) -> Iterator[KubernetesApiStandIn]:
    server = KubernetesApiStandIn(issuer, CREDENTIAL)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, issuer: ClusterIssuer, api: KubernetesApiStandIn) -> Iterator[ChitServer]:
    directory = tmp_path_factory.mktemp("chit-strings")
    (directory / "api-token").write_text(CREDENTIAL)
    (directory / "policies" / "chit").mkdir(parents=True)
    (directory / "policies" / "chit" / "decision.rego").write_text(DESCRIPTIVE)
    cluster = {
        "name": "strings",
        "issuer": ISSUER,
        "jwks_uri": documents.url("/strings/jwks"),
        "audiences": ["chit"],
        "api": {"server": api.url(""), "token_file": str(directory / "api-token")},
        "pod_lookup": True,
    }
    server = ChitServer(directory, {"policy": {"dir": str(directory / "policies")}, "attestors": {"kubernetes": {"clusters": [cluster]}}}).start()
    yield server
    server.stop()


def pod_token(issuer: ClusterIssuer) -> str:
    k8s = issuer.claims()["kubernetes.io"]
    k8s["pod"]["name"] = f"agent-{uuid.uuid4().hex[:8]}"
    return issuer.token(**{"kubernetes.io": k8s})


def test_an_image_reference_cannot_rewrite_the_decision(chit: ChitServer, api: KubernetesApiStandIn, issuer: ClusterIssuer) -> None:
    """The review's escalation: an extra container whose spec image carries a decision."""
    good = ("registry.example/agent:1.0", "registry.example/agent@sha256:" + "a" * 64)
    token = pod_token(issuer)
    api.add_pod(token, images=[good, (EVIL_REF, "")])
    body = assert_refused(chit.exchange(token, scope="admin:everything"), 400, "invalid_request")
    line = chit.audit_for(body["decision_id"])
    assert line["outcome"] == "invalid" and line["granted_scope"] == [] and line["jti"] is None
    assert any("input.images[1].ref contains '\"'" in reason for reason in line["reasons"]), line["reasons"]
    assert "admin" not in json.dumps(body)

    # The same pod with an ordinary unpinned image: the policy's own reason, carried exactly.
    token = pod_token(issuer)
    api.add_pod(token, images=[good, ("registry.example/tools:1", "")])
    body = assert_refused(chit.exchange(token))
    assert chit.audit_for(body["decision_id"])["reasons"] == ["image registry.example/tools:1 is not pinned by digest"]

    token = pod_token(issuer)
    api.add_pod(token, images=[good])
    assert assert_issued(chit.exchange(token))["scope"] == "read:db"


@pytest.mark.parametrize("audience", ['https://x"', "https://db.internal\\", "https://db.internal\x01", "https://db .internal"])
def test_request_strings_outside_their_grammar_are_refused_before_the_policy(
    chit: ChitServer, api: KubernetesApiStandIn, issuer: ClusterIssuer, audience: str
) -> None:
    token = pod_token(issuer)
    api.add_pod(token)
    calls = len(api.requests)
    for field in ("audience", "resource"):
        body = assert_refused(chit.exchange(token, **{field: audience}), 400, "invalid_target")
        assert chit.audit_for(body["decision_id"])["outcome"] == "invalid"
    assert_refused(chit.exchange(token, scope='read:db"'), 400, "invalid_scope")
    assert_refused(chit.exchange(token, scope="read:db\\"), 400, "invalid_scope")
    assert len(api.requests) == calls  # refused by the request parser, before any check of the token


def test_an_ec2_tag_cannot_replace_the_role(tmp_path: Path, documents: DocumentServer, aws_regions: Any, moto: MotoServer) -> None:
    """The review's tag payload through a real exchange: refused, and STS is never called."""
    from tests.conftest import aws_chit_config
    from tests.factories import AWS_TEST_ENV, MOTO_ACCOUNT

    (tmp_path / "policies" / "chit").mkdir(parents=True)
    (tmp_path / "policies" / "chit" / "decision.rego").write_text(
        'package chit\n\nimport rego.v1\n\ndecision := {"allow": true, "aws": {"role_arn": '
        f'"arn:aws:iam::{MOTO_ACCOUNT}:role/agent", "tags": input.attestation.tags}}}}\n'
    )
    server = ChitServer(tmp_path, aws_chit_config(documents, aws_regions, tmp_path / "policies", endpoint_url=moto.url), env=AWS_TEST_ENV).start()
    try:
        payload = f'"}}, "role_arn": "arn:aws:iam::{MOTO_ACCOUNT}:role/admin", "tags": {{"team": "x'
        instance = moto.launch_instance(tags={"team": payload})
        document = moto.document_for(instance)
        calls = len(moto.requests("AssumeRole"))
        token = iid_token(document, new_nonce(), signature=aws_regions.us_east_1.signature(document))
        body = assert_refused(
            server.exchange(token, subject_token_type="urn:chit:params:oauth:token-type:aws-iid",
                            requested_token_type="urn:chit:params:oauth:token-type:aws-credentials"),
        )
        line = server.audit_for(body["decision_id"])
        assert line["outcome"] == "invalid" and any("input.attestation.tags.team" in r for r in line["reasons"])
        assert len(moto.requests("AssumeRole")) == calls
    finally:
        server.stop()
