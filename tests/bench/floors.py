"""The two floors chit's exchange benchmark is measured against, in the same run:

- `verify_sign_app`: chit's own app and pipeline (form parsing, Kubernetes
  verification, policy input, minting, audit) with the policy engine replaced
  by a constant decision — what an exchange costs without Rego;
- `trivial_app`: a Starlette endpoint that reads the form body and returns a
  small JSON document — what the HTTP stack alone costs.

Both are served by `python -m tests.bench.floors {verify_sign|trivial} --port P --workers N`
with exactly the uvicorn settings `chit serve` uses.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from chit.serving.run import run_uvicorn
from chit.server.config import RESOLVED_CONFIG_ENV, Config

CONSTANT_DECISION = {"allow": True, "scope": ["read:db", "write:db"], "audience": ["https://bench.internal"], "ttl": 900, "reasons": ["floor"]}


class ConstantEngine:
    name = "constant"

    async def decide(self, policy_input: dict[str, Any]) -> Any:
        return CONSTANT_DECISION

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def verify_sign_app() -> Starlette:
    from chit.server.app import create_app

    app = create_app(Config.model_validate_json(os.environ[RESOLVED_CONFIG_ENV]))
    app.state.exchange.policy = ConstantEngine()
    return app


def trivial_app() -> Starlette:
    async def token(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"access_token": "x", "token_type": "Bearer", "expires_in": 900})

    return Starlette(routes=[Route("/token", token, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("floor", choices=["verify_sign", "trivial"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    run_uvicorn(f"tests.bench.floors:{args.floor}_app", "127.0.0.1", args.port, args.workers)


if __name__ == "__main__":
    main()
