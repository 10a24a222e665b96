"""Operational logs (docs/operators/logs.md) and readiness that says why.

- production logs are JSON lines on stderr; every line logged during an exchange
  carries its decision_id, the one of its audit line and its error response;
- a message cannot break the one-object-per-line framing;
- `log.level` filters; the audit log is untouched;
- /readyz names the reason of each failing check, and the log says it once when a
  check starts failing and once when it passes again, not on every probe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from chit.server.config import Signing
from chit.server.keys import KeySeries, KeyStore, write_key_file
from chit.server.logs import DECISION_ID, ExchangeContext, JsonLines, Log, Text
from chit.server.readiness import Readiness
from tests.conftest import TEST_BINDINGS
from tests.factories import ChitServer, ClusterIssuer, DocumentServer, RedisServer, assert_refused, closed_port_url, copy_policy

ISSUER = "https://logs.k8s.chit.test"


def json_lines(server: ChitServer) -> list[dict[str, Any]]:
    """Every line chit wrote to stderr (and stdout: the audit log goes to a file here), parsed."""
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def record(message: str, *args: Any, exc_info: Any = None) -> logging.LogRecord:
    entry = logging.LogRecord("chit.test", logging.WARNING, __file__, 1, message, args, exc_info)
    ExchangeContext().filter(entry)
    return entry


def test_a_json_line_is_one_object_whatever_the_message_holds() -> None:
    forged = 'x\n{"level":"INFO","message":"forged"}\r\u2028'
    line = JsonLines().format(record("kid %s not used", forged))
    assert "\n" not in line and "\r" not in line
    entry = json.loads(line)
    assert entry["message"] == f"kid {forged} not used" and entry["level"] == "WARNING" and entry["logger"] == "chit.test"
    assert entry["ts"].endswith("Z") and "decision_id" not in entry


def test_lines_logged_inside_an_exchange_carry_its_decision_id() -> None:
    token = DECISION_ID.set("0b5c9a4e-6a70-4f00-8000-00000000002a")
    try:
        inside = record("fetching keys")
    finally:
        DECISION_ID.reset(token)
    assert json.loads(JsonLines().format(inside))["decision_id"] == "0b5c9a4e-6a70-4f00-8000-00000000002a"
    assert "[0b5c9a4e-6a70-4f00-8000-00000000002a]: fetching keys" in Text().format(inside)
    assert "decision_id" not in json.loads(JsonLines().format(record("outside")))


def test_an_exception_is_in_the_line_not_after_it() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        entry = json.loads(JsonLines().format(record("failed", exc_info=sys.exc_info())))
    assert entry["exception"].startswith("Traceback") and "ValueError: boom" in entry["exception"]


def test_log_level_and_format_are_checked_in_the_file() -> None:
    assert Log.model_validate({"level": "DEBUG", "format": "text"}).level == "DEBUG"
    for wrong in ({"level": "debug"}, {"format": "xml"}, {"colour": True}):
        with pytest.raises(ValueError):
            Log.model_validate(wrong)


# --- a real chit -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logs_issuer(documents: DocumentServer) -> ClusterIssuer:
    issuer = ClusterIssuer("logs", ISSUER, "ES256")
    documents.serve("/logs/jwks", issuer.jwks())
    return issuer


@pytest.fixture(scope="module")
def chit(tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer, logs_issuer: ClusterIssuer, redis: RedisServer) -> Iterator[ChitServer]:
    """Production logging; OPA unreachable (never ready: policy), state in a Redis the tests kill."""
    directory = tmp_path_factory.mktemp("logs")
    config = {
        "policy": {"engine": "opa", "opa_url": closed_port_url(), "timeout_ms": 300},
        "attestors": {"kubernetes": {"clusters": [{"name": "logs", "issuer": ISSUER, "jwks_uri": documents.url("/logs/jwks"), "audiences": ["chit"]}]}},
        "state": {"backend": "redis", "redis_url": redis.url, "timeout_ms": 300},
        "log": {"level": "INFO"},
    }
    server = ChitServer(directory, {**config, "policy": {**config["policy"], "dir": str(copy_policy(directory / "policies", TEST_BINDINGS))}})
    yield server.start(ready_path="/healthz")
    server.stop()


def test_production_logs_are_json_lines_and_an_exchange_s_lines_carry_its_decision_id(
    chit: ChitServer, documents: DocumentServer, logs_issuer: ClusterIssuer
) -> None:
    documents.failures["/logs/jwks"] = 500  # the keys cannot be fetched: 503, and a warning in the exchange
    try:
        body = assert_refused(chit.exchange(logs_issuer.token()), status=503, error="temporarily_unavailable")
    finally:
        del documents.failures["/logs/jwks"]
    lines = json_lines(chit)  # every line parses: nothing but JSON objects
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line["logger"] == "chit.serve" and "production mode: listening on" in line["message"] for line in lines)
    fetch = [line for line in lines if line["logger"] == "chit.jwks" and "could not be fetched" in line["message"]]
    assert fetch and fetch[-1]["decision_id"] == body["decision_id"] == chit.audit_for(body["decision_id"])["decision_id"]
    assert fetch[-1]["level"] == "WARNING"
    # The audit log is still its own stream, one JSON object per decision, as before.
    assert set(chit.audit_for(body["decision_id"])) >= {"ts", "decision_id", "outcome", "reasons", "latency_ms"}


def test_readyz_says_why_and_the_log_says_it_once_per_change(chit: ChitServer, redis: RedisServer) -> None:
    def probe() -> dict[str, Any]:
        response = chit.client.get("/readyz")
        assert response.status_code == 503
        return response.json()

    for _ in range(4):
        answer = probe()
    assert answer["checks"] == {"signing_key": True, "policy": False, "state": True}
    assert answer["reasons"] == {"policy": f"OPA at {chit.config['policy']['opa_url']} unreachable: ConnectError"}

    redis.kill()
    try:
        for _ in range(3):
            answer = probe()
        assert answer["checks"]["state"] is False and answer["reasons"]["state"].startswith("redis: ConnectionError: ")
    finally:
        redis.start()
    answer = probe()
    assert answer["checks"]["state"] is True and set(answer["reasons"]) == {"policy"}

    messages = [line["message"] for line in json_lines(chit) if line["logger"] == "chit.readiness"]
    assert [m.split(":")[0] + ":" + m.split(":")[1] for m in messages] == ["not ready: policy", "not ready: state", "ready again: state"]
    assert messages[0] == f"not ready: policy: {answer['reasons']['policy']}"


def test_readiness_names_each_key_series_without_an_active_key(tmp_path: Path) -> None:
    """signing.algorithms: every series must have an active key, and the reason names the missing ones."""
    signing = Signing(keys_dir=tmp_path, algorithms=["ES256", "RS256", "EdDSA"])
    write_key_file(tmp_path, "ES256", int(time.time()))
    exchange = SimpleNamespace(config=SimpleNamespace(signing=signing), keys=KeyStore(tmp_path, KeySeries(signing.series)))
    readiness = Readiness(exchange)  # type: ignore[arg-type]  # the two attributes the signing-key check reads
    assert asyncio.run(readiness.signing_key()) == f"no active RS256, EdDSA signing key in {tmp_path}"
    write_key_file(tmp_path, "RS256", int(time.time()))
    write_key_file(tmp_path, "EdDSA", int(time.time()))
    exchange.keys.reload(force=True)
    assert asyncio.run(readiness.signing_key()) is None
