"""Where the upstream keys come from: a file (a mounted Kubernetes Secret, rotated by the
kubelet's `..data` swap) re-read when it changes, and AWS Secrets Manager (moto's, through
boto3), cached and refreshed in the background. A key that cannot be used stops the start
with the file's name, never the content; no message anywhere quotes a key."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

import chit.gateway.upstream_keys
from chit.aws import Aws, AwsClients
from chit.gateway.config import AwsSecret
from chit.gateway.upstream_keys import FileKey, KeyUnavailable, SecretsManagerKey
from tests.factories import AWS_TEST_ENV, ChitServer, MotoServer, run_chit
from tests.gateway.servers import KEYS, GatewayServer, UpstreamStandIn, route

pytestmark = pytest.mark.timeout(120)
CHAT = "/openai/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def rotating_gateway(tmp_path: Path, token_server: ChitServer, upstream: UpstreamStandIn) -> Iterator[GatewayServer]:
    server = GatewayServer(tmp_path / "gateway", token_server.url, [route("openai", upstream.url)]).start()
    yield server
    server.stop()
    upstream.accept(openai=KEYS["openai"])


def test_a_rotated_key_file_is_picked_up(rotating_gateway: GatewayServer, upstream: UpstreamStandIn,
                                         access_token: Callable[..., str]) -> None:
    token = access_token("rotator")
    post = lambda: rotating_gateway.client.post(CHAT, json=BODY, headers={"Authorization": f"Bearer {token}"})  # noqa: E731
    assert post().status_code == 200
    rotated = "sk-standin-openai-rotated-9876543210"
    upstream.accept(openai=rotated)  # the provider now takes the new key only
    assert post().status_code == 401  # the gateway still injects the old one
    rotating_gateway.keys.write({"openai": rotated.encode() + b"\n"})  # the kubelet's atomic swap
    written = time.monotonic()
    while (status := post().status_code) != 200:
        assert status == 401 and time.monotonic() - written < 3, status
        time.sleep(0.05)
    headers = dict(upstream.requests()[-1]["headers"])
    assert headers["authorization"] == f"Bearer {rotated}"
    assert "upstream key" in rotating_gateway.log() and rotated not in rotating_gateway.log()
    # Operational logs are JSON lines, as the token server's; the line of the call that found
    # the new key carries that call's decision_id.
    lines = [json.loads(line) for line in rotating_gateway.log().splitlines()]
    assert any(line["logger"] == "chit.gateway" and "listening on" in line["message"] for line in lines)
    changed = [line for line in lines if "changed: the new key is in use" in line["message"]]
    assert changed and changed[-1]["decision_id"] in {line["decision_id"] for line in rotating_gateway.audit_lines()}

    rotating_gateway.keys.write({"openai": b"sk bad key with spaces\n"})  # a bad rotation: the key in use stays
    time.sleep(1.2)
    assert post().status_code == 200
    log = rotating_gateway.log()
    assert "a key is one line of visible ASCII" in log and "sk bad key" not in log


def test_an_unusable_key_file_stops_the_start(tmp_path: Path, token_server: ChitServer, upstream: UpstreamStandIn) -> None:
    server = GatewayServer(tmp_path, token_server.url, [route("openai", upstream.url)], keys={"openai": "two words"})
    result = run_chit("gateway", "--config", str(server.config_path))
    server.client.close()
    assert result.returncode == 2
    assert "keys/openai" in result.stderr and "visible ASCII" in result.stderr
    assert "two words" not in result.stderr


def test_config_errors_name_the_key_and_the_file(tmp_path: Path, upstream: UpstreamStandIn) -> None:
    bad = route("openai", upstream.url, inject={"header": "host"}, budgets={"tokens_per_day": -1})
    del bad["provider"]
    server = GatewayServer(tmp_path, "http://127.0.0.1:1", [bad, route("anthropic", upstream.url, prefix="/metrics")], unknown=1)
    result = run_chit("gateway", "--config", str(server.config_path))
    server.client.close()
    assert result.returncode == 2
    for expected in (str(server.config_path), "routes[0].inject.header", "routes[0].budgets.tokens_per_day",
                     "routes[1].prefix", "unknown: unknown key"):
        assert expected in result.stderr, result.stderr


# --- AWS Secrets Manager, through boto3, against moto ------------------------------------------


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.now = 1000.0
        monkeypatch.setattr(chit.gateway.upstream_keys, "_clock", lambda: self.now)


def test_a_secrets_manager_key_is_cached_then_refreshed(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    clock = Clock(monkeypatch)
    secrets = moto.client("secretsmanager")
    secrets.create_secret(Name="gateway/openai", SecretString=json.dumps({"api_key": "sk-from-secrets-manager-1"}))
    source = SecretsManagerKey(AwsSecret(secret_id="gateway/openai", json_key="api_key", cache_seconds=60),
                               AwsClients(Aws(endpoint_url=moto.url)))

    async def scenario() -> None:
        assert await source.current() == "sk-from-secrets-manager-1"
        secrets.put_secret_value(SecretId="gateway/openai", SecretString=json.dumps({"api_key": "sk-from-secrets-manager-2"}))
        clock.now += 30
        assert await source.current() == "sk-from-secrets-manager-1"  # cached
        clock.now += 31
        assert await source.current() == "sk-from-secrets-manager-1"  # answered at once; refreshing behind
        for _ in range(100):
            if await source.current() == "sk-from-secrets-manager-2":
                break
            await asyncio.sleep(0.05)
        assert await source.current() == "sk-from-secrets-manager-2"
        secrets.delete_secret(SecretId="gateway/openai", ForceDeleteWithoutRecovery=True)
        clock.now += 61
        await source.current()
        await asyncio.sleep(0.5)
        assert await source.current() == "sk-from-secrets-manager-2"  # a failed refresh keeps the key in use

    asyncio.run(scenario())


def test_a_missing_secret_fails_closed_without_quoting_anything(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    secrets = moto.client("secretsmanager")
    secrets.create_secret(Name="gateway/not-json", SecretString="sk-plain-secret-value")
    clients = AwsClients(Aws(endpoint_url=moto.url))

    async def scenario() -> None:
        with pytest.raises(KeyUnavailable, match="ResourceNotFoundException"):
            await SecretsManagerKey(AwsSecret(secret_id="gateway/absent"), clients).current()
        with pytest.raises(KeyUnavailable) as error:
            await SecretsManagerKey(AwsSecret(secret_id="gateway/not-json", json_key="api_key"), clients).current()
        assert "sk-plain-secret-value" not in str(error.value)
        assert await SecretsManagerKey(AwsSecret(secret_id="gateway/not-json"), clients).current() == "sk-plain-secret-value"

    asyncio.run(scenario())


def test_a_key_file_is_checked_at_most_every_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    path = tmp_path / "key"
    path.write_text("sk-first\n")
    source = FileKey(path)
    assert source.load() == "sk-first"
    path.write_text("sk-second-longer\n")

    async def scenario() -> None:
        assert await source.current() == "sk-first"
        clock.now += 1.0
        assert await source.current() == "sk-second-longer"
        path.unlink()
        clock.now += 1.0
        assert await source.current() == "sk-second-longer"  # the file is gone: the key in use stays

    asyncio.run(scenario())
