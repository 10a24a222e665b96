"""A stand-in for an OPA server (`opa run --server DIR`), backed by rego-cpp.

The OPA binary cannot be installed here, so the tests run chit's OPA engine
and `chit policy test/eval --engine opa` against this process. It answers the
parts of OPA's REST API that chit uses, in OPA's JSON shapes
(server/types/types.go, server/writer/writer.go of OPA v1):

- `GET /health` → 200 `{}`;
- `POST /v1/data/{path}` with `{"input": …}` → 200 `{"result": …}`, or 200
  `{}` when the document is undefined; an evaluation error → 500
  `{"code": "internal_error", "message": "error(s) occurred while evaluating
  query", "errors": [{"code": "eval_…", "message": …}]}`; a body that is not
  a JSON object → 400 `{"code": "invalid_parameter", …}`;
- `GET /v1/policies` → 200 `{"result": [{"id", "raw", "ast"}]}`.

Test-only controls, under `/_standin/`: `PUT /_standin/fault` with
`{"status", "body", "delay", "close", "paths"}` makes matching requests slow,
answer a fixed status and body, or drop the connection; `DELETE` clears it;
`GET /_standin/requests` lists the inputs received.

Run: python -m tests.opa_standin --addr 127.0.0.1:8181 policies/
(one directory; `decision` needs a module of package chit there)
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import regopy

from chit.policy import PolicyEvaluationError, PolicyInputUnrepresentable
from chit.policy.bundle import load_policy_dir
from chit.policy.embedded import CompiledPolicy, EmbeddedEngine
from chit.policy.opa import DECISION_PATH
from chit.policy.source import read_modules
from chit.policy.testing import EmbeddedTests

EVALUATION_ERROR = "error(s) occurred while evaluating query"


class Policies:
    """Every module and data file of the directory, as `opa run` loads them (tests included).

    Compiled once, as OPA compiles once: chit's decision path by chit's embedded
    engine, every other rule of the policy into one plan evaluated with the
    request's input, and the test rules as `chit policy test` compiles them
    (chit.policy.testing: `with` made to work for rego-cpp); anything else is
    queried from an interpreter, compiling each time."""

    def __init__(self, directory: Path):
        self.lock = threading.Lock()  # rego-cpp interpreters: one evaluation at a time
        bundle = load_policy_dir(directory, require_decision=False)
        self.modules = {f"{directory}/{name}": source for name, source in bundle.modules.items()}
        self.interpreter = regopy.Interpreter()
        for module_id, source in self.modules.items():
            self.interpreter.add_module(module_id, source)
        self.interpreter.add_data_json(json.dumps(bundle.data))
        policy = load_policy_dir(directory, include_tests=False, require_decision=False)
        self.decisions = EmbeddedEngine(policy)
        rules = sorted({f"{m.package.replace('.', '/')}/{r.name}" for m in read_modules(policy.modules).values() if m.package for r in m.rules if not r.function})
        self.rules = CompiledPolicy(directory, policy.modules, policy.data, rules)
        self.tests = EmbeddedTests(bundle)
        self.test_plans = {t.entrypoint: g for g in self.tests.groups for t in g.tests}

    def evaluate(self, path: str, policy_input: Any) -> tuple[bool, Any]:
        """(ok, value): value None when undefined."""
        entrypoint = path.strip("/")
        with self.lock:
            try:
                if entrypoint == DECISION_PATH and policy_input is not None:
                    return True, self.decisions.evaluate(policy_input)
                if policy_input is not None and entrypoint in self.rules.entrypoints:
                    return True, self.rules.evaluate(entrypoint, policy_input)
                group = self.test_plans.get(entrypoint)
                if policy_input is None and group is not None:
                    rule = "data." + entrypoint.replace("/", ".")
                    if rule in group.set_aside or group.policy is None:
                        return False, None  # a test rego-cpp cannot run: OPA would, the stand-in errs
                    return True, group.policy.evaluate(entrypoint)
            except (PolicyEvaluationError, PolicyInputUnrepresentable):
                return False, None
            reference = "data" + "".join(f".{part}" for part in entrypoint.split("/") if part)
            self.interpreter.set_input(regopy.Input(policy_input if policy_input is not None else {}))
            output = self.interpreter.query(reference)
            if not output.ok():
                return False, None
            text = str(output)
        if text == "undefined":
            return True, None
        expressions = json.loads(text).get("expressions") or [None]
        return True, expressions[0]


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], policies: Policies):
        super().__init__(address, Handler)
        self.policies = policies
        self.fault: dict[str, Any] | None = None
        self.requests: list[dict[str, Any]] = []


class Handler(BaseHTTPRequestHandler):
    server: StandIn
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without NODELAY every keep-alive answer waits ~40 ms for an ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, status: int, document: Any) -> None:
        payload = document if isinstance(document, bytes) else (json.dumps(document, indent=2) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _faulted(self) -> bool:
        """Apply the configured fault to this request; True when it answered (or dropped) it."""
        fault = self.server.fault
        if fault is None or not any(self.path.startswith(p) for p in fault.get("paths", ["/v1/data"])):
            return False
        time.sleep(fault.get("delay", 0))
        if fault.get("close"):
            self.close_connection = True
            self.connection.close()
            return True
        if "status" not in fault:
            return False
        body = fault.get("body", {})
        self._json(fault["status"], body.encode() if isinstance(body, str) else body)
        return True

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/_standin/requests":
            return self._json(200, self.server.requests)
        if self._faulted():
            return None
        if self.path.split("?")[0] == "/health":
            return self._json(200, {})
        if self.path.split("?")[0] == "/v1/policies":
            modules = self.server.policies.modules
            return self._json(200, {"result": [{"id": i, "raw": raw, "ast": {}} for i, raw in modules.items()]})
        return self._json(404, {"code": "resource_not_found", "message": f"{self.path}: not found"})

    def do_PUT(self) -> None:  # noqa: N802
        if self.path == "/_standin/fault":
            self.server.fault = json.loads(self._body())
            return self._json(200, {})
        return self._json(405, {"code": "invalid_operation", "message": "not supported by the stand-in"})

    def do_DELETE(self) -> None:  # noqa: N802
        if self.path == "/_standin/fault":
            self._body()
            self.server.fault = None
            self.server.requests.clear()
            return self._json(200, {})
        return self._json(405, {"code": "invalid_operation", "message": "not supported by the stand-in"})

    def do_POST(self) -> None:  # noqa: N802
        raw = self._body()
        path = self.path.split("?")[0]
        if not path.startswith("/v1/data"):
            return self._json(404, {"code": "resource_not_found", "message": f"{path}: not found"})
        try:
            document = json.loads(raw) if raw else {}
            if not isinstance(document, dict):
                raise ValueError("not an object")
        except ValueError as error:
            return self._json(400, {"code": "invalid_parameter", "message": f"body contains malformed input document: {error}"})
        self.server.requests.append({"path": path, "input": document.get("input")})
        if self._faulted():
            return None
        ok, value = self.server.policies.evaluate(path.removeprefix("/v1/data"), document.get("input"))
        if not ok:
            error = {"code": "eval_internal_error", "message": "rego-cpp: evaluation failed (e.g. conflicting rule values)"}
            return self._json(500, {"code": "internal_error", "message": EVALUATION_ERROR, "errors": [error]})
        return self._json(200, {} if value is None else {"result": value})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:8181")
    parser.add_argument("path", type=Path, help="a policy directory (OPA bundle layout)")
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    server = StandIn((host, int(port)), Policies(args.path))
    server.serve_forever()


if __name__ == "__main__":
    main()
