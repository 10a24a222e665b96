"""`chit gateway --config FILE`: the credential-injection gateway, its own process.

It reads its own configuration file (never the token server's: that one names
the signing keys), checks everything it can at start (the file, every route's
key file, the listen address), then serves with chit's HTTP settings
(`chit.serving.run`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Sequence

from chit.gateway.config import CONFIG_ENV, RESOLVED_CONFIG_ENV, ConfigError, GatewayConfig, load_gateway_config


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"chit gateway: {message}", file=sys.stderr)
    raise SystemExit(code)


def gateway_config(args: argparse.Namespace, environ: dict[str, str]) -> GatewayConfig:
    """--config FILE, else $CHIT_GATEWAY_CONFIG; --host and --port override `listen`."""
    path = args.config or environ.get(CONFIG_ENV)
    if not path:
        fail(f"no configuration: pass --config FILE or set {CONFIG_ENV}")
    try:
        config = load_gateway_config(path)
    except ConfigError as error:
        fail(str(error))
    listen = config.listen.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    refusal = listen.clear_text_refusal()
    if refusal:
        fail(f"{path}: {refusal}")
    return config.model_copy(update={"listen": listen})


def cmd_gateway(args: argparse.Namespace) -> None:
    from chit.serving.run import metrics_across_workers

    config = gateway_config(args, dict(os.environ))
    if args.workers > 1 and config.state.backend == "memory":
        fail(
            f"--workers {args.workers} needs state.backend: redis: with the memory backend every worker would keep "
            "its own budgets and never see a revocation. Use state.backend: redis (state.redis_url), or --workers 1."
        )
    with metrics_across_workers(args.workers):
        start_gateway(config, args.workers)


def start_gateway(config: GatewayConfig, workers: int) -> None:
    import logging
    import logging.config

    from chit.gateway.app import build_gateway
    from chit.gateway.upstream_keys import KeyUnavailable
    from chit.serving.logs import log_config
    from chit.serving.run import run_uvicorn
    from chit.serving.tls import CertificateError, ReloadingCertificate

    tls = config.listen.tls
    try:
        # Fail here, once, with a readable message, rather than in every worker.
        gateway = build_gateway(config)
        certificate = None if tls is None else ReloadingCertificate(tls)
    except (KeyUnavailable, CertificateError, ValueError, OSError) as error:
        fail(str(error))
    gateway.audit.close()
    # From here on this process logs as its workers do (a failed start above is one plain line).
    logging.config.dictConfig(log_config(config.log))
    log = logging.getLogger("chit.gateway")
    os.environ[RESOLVED_CONFIG_ENV] = config.model_dump_json()
    scheme = "http" if tls is None else "https"
    log.info(
        "listening on %s://%s:%s (%s worker(s)); routes %s; tokens of %s for %s", scheme, config.listen.host, config.listen.port,
        workers, ", ".join(f"{r.prefix} -> {r.upstream}" for r in config.routes), config.chit.issuer, config.audience,
    )
    if config.state.backend == "memory":
        log.warning(
            "state.backend is memory: budgets are this process's own, and revocations (chit revoke --subject, "
            "POST /revoke) are never seen. Use state.backend: redis, the token server's Redis."
        )
    if config.listen.plain_http:
        log.warning("listen.plain_http is true: chit tokens and answers cross the network in clear")
    sys.stderr.flush()
    run_uvicorn(
        "chit.gateway.app:app_from_environment", config.listen.host, config.listen.port, workers, certificate, log_config(config.log)
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chit gateway",
        description="The credential-injection gateway: agents call key-only APIs with their chit token; "
        "the gateway injects the upstream key, enforces scopes, allowlists and budgets, and audits every call.",
    )
    parser.add_argument("--config", metavar="FILE", help=f"the gateway's YAML configuration (default: ${CONFIG_ENV})")
    parser.add_argument("--host", help="override listen.host")
    parser.add_argument("--port", type=int, help="override listen.port")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1; more need state.backend: redis)")
    parser.set_defaults(handler=cmd_gateway)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if "gateway" in arguments:  # `chit gateway …`: the command word itself
        arguments.remove("gateway")
    args = build_parser().parse_args(arguments)
    args.handler(args)
