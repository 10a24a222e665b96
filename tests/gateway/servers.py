"""The gateway's tests' processes: the provider stand-ins (`tests/gateway/upstreams.py`)
and `chit gateway` itself, each a real process on a free loopback port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.factories import ROOT, SecretVolume, free_port, read_audit_lines, wait_for_audit_line, wait_for_http

GATEWAY_AUDIENCE = "https://gateway.chit.test"
KEYS = {"openai": "sk-standin-openai-0123456789abcdef", "anthropic": "sk-ant-standin-0123456789abcdef",
        "gemini": "AIzaStandInGemini0123456789abcdef"}
INJECTION = {"openai": {"header": "authorization", "scheme": "Bearer"}, "anthropic": {"header": "x-api-key"},
             "gemini": {"header": "x-goog-api-key"}}
MODELS = {"openai": ["gpt-4o-mini", "echo-key"], "anthropic": ["claude-sonnet-4-5", "echo-key"],
          "gemini": ["gemini-2.5-flash", "echo-key"]}
PATHS = {"openai": ["/v1/chat/completions", "/v1/responses", "/v1/redirect"], "anthropic": ["/v1/messages"],
         "gemini": ["/v1beta/models/*", "/v1/models/*"]}


class UpstreamStandIn:
    """The three providers' stand-ins in one process, accepting only `keys`."""

    def __init__(self, directory: Path, keys: dict[str, str], delay: float = 0.2):
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "upstream.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.gateway.upstreams", "--port", str(self.port), "--delay", str(delay), "--keys", json.dumps(keys)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10)
        wait_for_http(self.client, "/_standin/requests", self.process, self.log_path)

    def requests(self) -> list[dict[str, Any]]:
        return self.client.get("/_standin/requests").json()

    def forget(self) -> None:
        self.client.delete("/_standin/requests")

    def accept(self, **keys: str) -> None:
        self.client.post("/_standin/keys", content=json.dumps(keys))

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=10)


def route(provider: str, upstream: str, *, name: str | None = None, prefix: str | None = None, **extra: Any) -> dict[str, Any]:
    """A route to `provider`'s stand-in, its key in the key volume's file of the same name."""
    return {
        "name": name or provider, "prefix": prefix or f"/{name or provider}", "upstream": upstream,
        "inject": INJECTION[provider], "key": {"file": f"keys/{provider}"}, "scope": f"llm:{provider}",
        "paths": PATHS[provider], "provider": provider, "models": MODELS[provider], **extra,
    }


class GatewayServer:
    """`chit gateway` in a subprocess, configured from a dict, with its keys in a Secret-like
    volume (`keys`, files named after the providers) that the configuration names."""

    def __init__(self, directory: Path, chit_url: str, routes: list[dict[str, Any]], *, state: dict[str, Any] | None = None,
                 workers: int = 1, keys: dict[str, str] | None = None, **config: Any):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.keys = SecretVolume(directory / "keys")
        self.keys.write({name: value.encode() + b"\n" for name, value in (keys or KEYS).items()})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {
            "chit": {"issuer": chit_url}, "audience": GATEWAY_AUDIENCE, "routes": routes,
            "listen": {"host": "127.0.0.1", "port": self.port}, "audit": {"sink": "audit.log"},
            "state": state or {"backend": "memory"}, **config,
        }
        self.config_path = directory / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> GatewayServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chit", "gateway", "--config", str(self.config_path), "--workers", str(self.workers)],
            cwd=self.directory, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=open(self.directory / "stdout.log", "ab"), stderr=open(self.directory / "gateway.log", "ab"),
        )
        wait_for_http(self.client, "/readyz", self.process, self.directory / "gateway.log")
        return self

    def stop(self) -> None:
        self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=40)

    def log(self) -> str:
        return (self.directory / "gateway.log").read_text(errors="replace")

    def audit_lines(self) -> list[dict[str, Any]]:
        return read_audit_lines(self.directory / "audit.log")

    def audit_for(self, decision_id: str, timeout: float = 3.0) -> dict[str, Any]:
        return wait_for_audit_line(self.audit_lines, decision_id, timeout)
