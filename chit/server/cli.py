"""The `chit` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, NoReturn, Sequence

from chit.server.config import CONFIG_ENV, RESOLVED_CONFIG_ENV, Config, ConfigError, load_config

if TYPE_CHECKING:
    from chit.state import StateStore
    from chit.serving.tls import ReloadingCertificate


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"chit: {message}", file=sys.stderr)
    raise SystemExit(code)


def config_from_args(args: argparse.Namespace, environ: dict[str, str] = os.environ) -> Config:  # type: ignore[assignment]
    """--config FILE, else $CHIT_CONFIG."""
    path = getattr(args, "config", None) or environ.get(CONFIG_ENV)
    if not path:
        fail(f"no configuration: pass --config FILE or set {CONFIG_ENV}")
    try:
        return load_config(path)
    except ConfigError as error:
        fail(str(error))
        raise  # unreachable


# --- chit serve -----------------------------------------------------------------


def serve_config(args: argparse.Namespace, environ: dict[str, str]) -> Config:
    from chit.server.dev import dev_config

    has_file = bool(args.config or environ.get(CONFIG_ENV))
    if not args.dev:
        config = config_from_args(args, environ)
    else:
        base = config_from_args(args, environ) if has_file else None
        config = dev_config(Path(args.state_dir), args.host or "127.0.0.1", args.port or 8400, base)
    listen = config.listen.model_copy(
        update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    )
    refusal = listen.clear_text_refusal()
    if refusal:
        fail(f"{args.config or environ.get(CONFIG_ENV) or 'chit serve --dev'}: {refusal}")
    return config.model_copy(update={"listen": listen})


def shared_state_users(config: Config) -> list[str]:
    """What keeps state that every worker (and replica) must share: with `state.backend:
    memory` each worker would keep its own, so the state would silently be per worker."""
    users = ["revocations (POST /revoke, chit revoke --subject), always on"]
    if config.attestors.aws_iid.enabled:
        users.append("AWS instance nonce bindings (attestors.aws_iid.enabled)")
    if config.attestors.gcp.enabled and config.attestors.gcp.single_use:
        users.append("GCP single-use tokens (attestors.gcp.single_use)")
    if config.rate_limits.per_subject_per_minute or config.rate_limits.per_client_per_minute:
        users.append("rate limits (rate_limits)")
    return users


def cmd_serve(args: argparse.Namespace) -> None:
    config = serve_config(args, dict(os.environ))
    if args.workers > 1 and config.state.backend == "memory":
        fail(
            f"--workers {args.workers} needs state.backend: redis. With the memory backend every worker "
            "would keep its own copy of state that must be shared: "
            + "; ".join(shared_state_users(config))
            + ". Use state.backend: redis (state.redis_url), or --workers 1."
        )
    from chit.serving.run import metrics_across_workers

    with metrics_across_workers(args.workers):
        start_server(config, args)


def start_server(config: Config, args: argparse.Namespace) -> None:
    from chit.server.app import build_exchange
    from chit.server.errors import OAuthError
    from chit.server.keys import SigningKeyError
    from chit.policy.bundle import PolicyLoadError
    from chit.serving.run import run_uvicorn
    from chit.serving.tls import CertificateError, ReloadingCertificate

    tls = config.listen.tls
    try:
        # Fail here, once, with a readable message, rather than in every worker.
        exchange = build_exchange(config)
        certificate = None if tls is None else ReloadingCertificate(tls)
    except (PolicyLoadError, SigningKeyError, ValueError, OSError, OAuthError, CertificateError) as error:
        fail(str(error))
    exchange.audit.close()
    os.environ[RESOLVED_CONFIG_ENV] = config.model_dump_json()
    base_url = f"{'http' if tls is None else 'https'}://{config.listen.host}:{config.listen.port}"
    mode = "dev mode" if config.dev else "production mode"
    print(f"chit {mode}: listening on {base_url} ({args.workers} worker(s)); issuer {config.issuer}", file=sys.stderr)
    if config.listen.plain_http:
        print(
            f"chit: WARNING: listen.plain_http is true: plain HTTP on {config.listen.host}:{config.listen.port}, "
            "subject tokens and issued tokens cross the network in clear unless something else encrypts them",
            file=sys.stderr,
        )
    if config.dev:
        state = f" --state-dir {args.state_dir}" if args.state_dir != ".chit" else ""
        print(
            "Try an exchange:\n"
            f"  TOKEN=$(chit dev token{state} --namespace demo --service-account agent)\n"
            f"  curl -s {base_url}/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange"
            ' -d subject_token_type=urn:ietf:params:oauth:token-type:jwt --data-urlencode "subject_token=$TOKEN"',
            file=sys.stderr,
            flush=True,
        )
    run_uvicorn("chit.server.app:app_from_environment", config.listen.host, config.listen.port, args.workers, certificate)


# --- chit dev token ---------------------------------------------------------------


def cmd_dev_token(args: argparse.Namespace) -> None:
    """A development token on stdout, or in `--output FILE` (0600, atomic, without the
    trailing newline a token file must not have: google-auth reads it verbatim)."""
    from chit.attestors.kubernetes.claims import DNS_LABEL, DNS_SUBDOMAIN
    from chit.files import write_private_file
    from chit.server.dev import dev_token

    # The names the server checks in every projected token: refused here, not at the exchange.
    for option, value, pattern, what in (
        ("--namespace", args.namespace, DNS_LABEL, "a DNS label (lowercase letters, digits, '-'; at most 63)"),
        ("--service-account", args.service_account, DNS_SUBDOMAIN, "a DNS subdomain (lowercase letters, digits, '-', '.')"),
        ("--pod", args.pod, DNS_SUBDOMAIN, "a DNS subdomain (lowercase letters, digits, '-', '.')"),
    ):
        if value is not None and not pattern.fullmatch(value):
            fail(f"{option} {value!r} is not {what}: chit would refuse the token")
    if not 0 < args.ttl <= 86400:
        fail(f"--ttl {args.ttl}: must be 1 to 86400 seconds (attestors.kubernetes.max_token_lifetime_seconds)")
    token = dev_token(
        Path(args.state_dir),
        namespace=args.namespace,
        service_account=args.service_account,
        pod=args.pod,
        audience=args.audience,
        ttl=args.ttl,
    )
    if args.output is None:
        print(token)
        return
    try:
        write_private_file(Path(args.output), token)
    except OSError as error:
        fail(f"cannot write {args.output}: {error.strerror}")


# --- chit keys ----------------------------------------------------------------------


def cmd_keys_rotate(args: argparse.Namespace) -> None:
    from chit.server.keys import KeySeries, has_keys, rotate

    config = config_from_args(args)
    series = KeySeries(config.signing.series)
    if args.algorithm is not None and args.algorithm not in series.algorithms:
        fail(f"--algorithm {args.algorithm} is not in signing.algorithms ({', '.join(series.algorithms)})")
    # An empty directory gets the first key of every series, each active at once: nothing has cached any.
    grace = config.signing.rotation_grace_seconds if has_keys(config.signing.keys_dir) else 0
    for algorithm in [args.algorithm] if args.algorithm else series.algorithms:
        key = rotate(config.signing.keys_dir, algorithm, grace, series=series)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.activates_at))
        print(f"added key {key.kid} ({key.algorithm}); published now, signs from {when}")


def cmd_keys_list(args: argparse.Namespace) -> None:
    from chit.server.keys import KeySeries, describe

    config = config_from_args(args)
    for row in describe(config.signing.keys_dir, series=KeySeries(config.signing.series)):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["activates_at"]))
        print(f"{row['kid']}  {row['algorithm']:6}  {row['state']:9}  activates {when}  {row['file']}")


def _key_store(config: Config):
    """The keys as a running server reads them; none is created here."""
    from chit.server.keys import KeySeries, KeyStore, SigningKeyError

    try:
        return KeyStore(config.signing.keys_dir, KeySeries(config.signing.series))
    except SigningKeyError as error:
        fail(str(error), 1)


def cmd_keys_export(args: argparse.Namespace) -> None:
    """The JWKS a relying party registers inline: every published key, the next one included."""
    from chit.server.publish import jwks

    config = config_from_args(args)
    document = jwks(_key_store(config), time.time())
    if not document["keys"]:
        fail(f"{config.signing.keys_dir} holds no key: start chit or run `chit keys rotate` first", 1)
    print(json.dumps(document, indent=1))


def cmd_keys_publish(args: argparse.Namespace) -> None:
    """The discovery document and the JWKS, on static hosting (S3) at the issuer's URL."""
    import boto3
    import botocore.exceptions

    from chit.server.publish import issuer_documents, publish_to_s3

    config = config_from_args(args)
    keys = _key_store(config)
    if not keys.keys:
        fail(f"{config.signing.keys_dir} holds no key: start chit or run `chit keys rotate` first", 1)
    s3 = boto3.client("s3", region_name=args.region or config.aws.region, endpoint_url=args.endpoint_url or config.aws.endpoint_url)
    try:
        written = publish_to_s3(s3, args.bucket, args.prefix, config.issuer, issuer_documents(config, keys, time.time()))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        fail(f"cannot publish to s3://{args.bucket}: {error}", 1)
    for key in written:
        print(f"wrote s3://{args.bucket}/{key}")
    print(f"serve the bucket at {config.issuer}: relying parties read {config.issuer}/.well-known/openid-configuration")


# --- chit policy ----------------------------------------------------------------------


def _policy_dir(args: argparse.Namespace) -> Path:
    from chit.policy.bundle import shipped_policy_dir

    if getattr(args, "dir", None):
        return Path(args.dir)
    if getattr(args, "config", None) or os.environ.get(CONFIG_ENV):
        return config_from_args(args).policy.dir or shipped_policy_dir()
    return shipped_policy_dir()


def _policy_queries(args: argparse.Namespace, *, for_tests: bool):
    """The engine `policy test`/`policy eval` ask: --engine, else the configured one, else embedded."""
    from chit.policy.testing import EmbeddedQueries, OpaQueries

    config = config_from_args(args) if (getattr(args, "config", None) or os.environ.get(CONFIG_ENV)) else None
    engine = args.engine or (config.policy.engine if config else "embedded")
    if engine == "opa":
        return OpaQueries(args.opa_url or (config.policy.opa_url if config else "http://127.0.0.1:8181"))
    return EmbeddedQueries(_policy_dir(args), require_decision=not for_tests)


async def _policy_test(args: argparse.Namespace) -> list:
    from chit.policy.testing import OpaQueries, require_same_modules, run_tests

    queries = _policy_queries(args, for_tests=True)
    try:
        if isinstance(queries, OpaQueries):
            await queries.load()
            if getattr(args, "dir", None):
                require_same_modules(Path(args.dir), queries)
        return await run_tests(queries, embedded=not isinstance(queries, OpaQueries))
    finally:
        await queries.close()


def cmd_policy_test(args: argparse.Namespace) -> None:
    import asyncio

    from chit.policy import PolicyUnavailable
    from chit.policy.bundle import PolicyLoadError

    try:
        results = asyncio.run(_policy_test(args))
    except (PolicyLoadError, PolicyUnavailable) as error:
        fail(str(error), 1)
    if not results:
        fail("no test_ rules found", 1)
    for result in results:
        if args.verbose or result.status != "PASS":
            line = f"{result.status}: {result.rule} ({result.milliseconds:.1f} ms)"
            print(line + (f"\n  {result.detail}" if result.detail else ""))
    passed = sum(r.status == "PASS" for r in results)
    print(f"{'-' * 60}\nPASS: {passed}/{len(results)}" + ("" if passed == len(results) else f"  FAIL/ERROR: {len(results) - passed}"))
    raise SystemExit(0 if passed == len(results) else 1)


async def _policy_eval(args: argparse.Namespace, policy_input: dict) -> dict:
    from chit.policy.testing import OpaQueries, evaluate

    queries = _policy_queries(args, for_tests=False)
    try:
        if isinstance(queries, OpaQueries) and args.explain:
            await queries.load()
        return await evaluate(queries, policy_input, with_explanation=args.explain)
    finally:
        await queries.close()


def cmd_policy_eval(args: argparse.Namespace) -> None:
    import asyncio

    from chit.policy import PolicyUnavailable
    from chit.policy.bundle import PolicyLoadError

    try:
        policy_input = json.loads(Path(args.input).read_text() if args.input != "-" else sys.stdin.read())
    except (OSError, ValueError) as error:
        fail(f"cannot read input {args.input}: {error}")
    if not isinstance(policy_input, dict):
        fail(f"input {args.input} must be a JSON object")
    try:
        result = asyncio.run(_policy_eval(args, policy_input))
    except (PolicyLoadError, PolicyUnavailable) as error:
        fail(str(error), 1)
    print(json.dumps(result, indent=2))


def cmd_config_check(args: argparse.Namespace) -> None:
    from chit.policy import build_engine
    from chit.policy.bundle import PolicyLoadError

    config = config_from_args(args)
    refusal = config.listen.clear_text_refusal()
    if refusal:
        fail(f"{args.config or os.environ.get(CONFIG_ENV)}: {refusal}", 1)
    try:
        build_engine(config.policy)
    except PolicyLoadError as error:
        fail(str(error), 1)
    policy = "policy OK" if config.policy.engine == "embedded" else f"policy served by OPA at {config.policy.opa_url}"
    print(f"{args.config or os.environ.get(CONFIG_ENV)}: configuration and {policy}")


# --- chit aws -------------------------------------------------------------------------


def _run_on_state_store(config: Config, operation: Callable[[StateStore], Awaitable[bool]], memory_refusal: str, unavailable: str) -> bool:
    """Run one operator command against the configured state store (Redis: the
    memory backend lives inside the server process, which a command cannot reach)."""
    import asyncio

    from chit.state import StateUnavailable, build_state_store

    if config.state.backend == "memory":
        fail(f"state.backend is memory: {memory_refusal}", 1)

    async def run() -> bool:
        store = build_state_store(config.state)
        try:
            return await operation(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StateUnavailable as error:
        fail(f"{unavailable}: {error}", 1)


def cmd_aws_forget_instance(args: argparse.Namespace) -> None:
    """Remove an instance's nonce binding: its next exchange binds a new nonce."""
    from chit.attestors.aws_iid.bindings import InstanceBindings
    from chit.attestors.aws_iid.document import INSTANCE_ID

    config = config_from_args(args)
    if not INSTANCE_ID.fullmatch(args.instance_id):
        fail(f"{args.instance_id!r} is not an EC2 instance id (i-0123456789abcdef0)")
    forgotten = _run_on_state_store(
        config,
        lambda store: InstanceBindings(store, config.attestors.aws_iid.binding_ttl_seconds).forget(args.instance_id),
        "the nonce bindings live inside the running chit server process, which this command cannot reach. "
        "Restarting the server forgets every binding; use state.backend: redis to forget one instance at a time.",
        "the state store is unavailable",
    )
    if forgotten:
        print(f"forgot the nonce binding of {args.instance_id}; its next exchange binds a new nonce")
    else:
        print(f"{args.instance_id} has no nonce binding")


# --- chit revoke ----------------------------------------------------------------------


def cmd_revoke(args: argparse.Namespace) -> None:
    """The operator's kill switch: revoke a subject's tokens and refuse its exchanges, or lift it."""
    from chit.revocation import Revocations

    config = config_from_args(args)
    prefix = f"spiffe://{config.trust_domain}/"
    if not args.subject.startswith(prefix) or len(args.subject) <= len(prefix) or not args.subject.isprintable():
        fail(f"{args.subject!r} is not a SPIFFE ID of trust domain {config.trust_domain} ({prefix}…)")
    changed = _run_on_state_store(
        config,
        lambda store: Revocations(store).change_subject(args.subject, lift=args.lift, now=time.time()),
        "revocations live inside the running chit server process, which this command cannot reach, "
        "so nothing was revoked. Use state.backend: redis to revoke subjects; with the memory backend "
        "only POST /revoke (one token) is available.",
        "the state store is unavailable, nothing was changed",
    )
    if args.lift:
        print(f"lifted the revocation of {args.subject}: new exchanges are allowed" if changed else f"{args.subject} is not revoked")
    else:
        print(f"revoked {args.subject}: its tokens issued until now are inactive and new exchanges are refused "
              f"(every replica within 1 s) until `chit revoke --subject {args.subject} --lift`")


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chit", description="chit's server commands (the agent's: chit --help).")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", metavar="FILE", help=f"YAML configuration (default: ${CONFIG_ENV})")
        return p

    def with_engine(p: argparse.ArgumentParser) -> None:
        p.add_argument("--engine", choices=["embedded", "opa"], help="policy engine (default: the configured one, else embedded)")
        p.add_argument("--opa-url", metavar="URL", help="OPA server for --engine opa (default: policy.opa_url, else http://127.0.0.1:8181)")

    serve = with_config(commands.add_parser("serve", help="run the exchange server"))
    serve.add_argument("--dev", action="store_true", help="development mode: embedded defaults and a local dev cluster")
    serve.add_argument("--host", help="override listen.host")
    serve.add_argument("--port", type=int, help="override listen.port")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--state-dir", default=".chit", help="dev mode: where keys and the dev cluster live")
    serve.set_defaults(handler=cmd_serve)

    dev = commands.add_parser("dev", help="development helpers").add_subparsers(dest="dev_command", required=True)
    token = dev.add_parser("token", help="print a token of the development cluster (trusted by `serve --dev` only)")
    token.add_argument("--namespace", required=True)
    token.add_argument("--service-account", required=True)
    token.add_argument("--pod", help="pod name (default: generated)")
    token.add_argument("--audience", default="chit")
    token.add_argument("--ttl", type=int, default=3600)
    token.add_argument("--state-dir", default=".chit")
    token.add_argument("--output", metavar="FILE", help="write the token to FILE (mode 0600, no trailing newline) instead of stdout")
    token.set_defaults(handler=cmd_dev_token)

    keys = commands.add_parser("keys", help="signing keys").add_subparsers(dest="keys_command", required=True)
    rotate = with_config(keys.add_parser("rotate", help="add the next signing key of every series (signing.algorithms)"))
    rotate.add_argument("--algorithm", choices=["ES256", "RS256", "EdDSA"], help="rotate this series only")
    rotate.set_defaults(handler=cmd_keys_rotate)
    with_config(keys.add_parser("list", help="list signing keys and their state")).set_defaults(handler=cmd_keys_list)
    with_config(keys.add_parser("export", help="print the JWKS to register inline with a relying party (the next key included)")).set_defaults(
        handler=cmd_keys_export
    )
    publish = with_config(keys.add_parser("publish", help="write the discovery document and the JWKS to an S3 bucket served at the issuer's URL"))
    publish.add_argument("--bucket", required=True, help="the S3 bucket")
    publish.add_argument("--prefix", help="the objects' key prefix (default: the issuer URL's path)")
    publish.add_argument("--region", help="the bucket's region (default: aws.region)")
    publish.add_argument("--endpoint-url", metavar="URL", help="the S3 endpoint (default: aws.endpoint_url, else AWS's)")
    publish.set_defaults(handler=cmd_keys_publish)

    policy = commands.add_parser("policy", help="policy tooling").add_subparsers(dest="policy_command", required=True)
    test = with_config(policy.add_parser("test", help="run the Rego unit tests (test_* rules)"))
    test.add_argument("dir", nargs="?", help="policy directory (default: the configured or shipped policies)")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
    with_engine(test)
    test.set_defaults(handler=cmd_policy_test)
    evaluate = with_config(policy.add_parser("eval", help="print the decision for an input document"))
    evaluate.add_argument("--input", required=True, metavar="FILE", help="input JSON ('-' for stdin)")
    evaluate.add_argument("--dir", help="policy directory (default: the configured or shipped policies)")
    evaluate.add_argument("--explain", action="store_true", help="also print which rules produced the decision")
    with_engine(evaluate)
    evaluate.set_defaults(handler=cmd_policy_eval)

    aws = commands.add_parser("aws", help="AWS instance identity").add_subparsers(dest="aws_command", required=True)
    forget = with_config(aws.add_parser("forget-instance", help="remove an instance's nonce binding (its next exchange binds a new nonce)"))
    forget.add_argument("instance_id", metavar="ID", help="EC2 instance id")
    forget.set_defaults(handler=cmd_aws_forget_instance)

    revoke = with_config(commands.add_parser("revoke", help="revoke every token of a workload and refuse its exchanges (--lift to undo)"))
    revoke.add_argument("--subject", required=True, metavar="SPIFFE_ID", help="the workload's SPIFFE ID (its tokens' sub)")
    revoke.add_argument("--lift", action="store_true", help="allow the subject's exchanges again")
    revoke.set_defaults(handler=cmd_revoke)

    config = commands.add_parser("config", help="configuration").add_subparsers(dest="config_command", required=True)
    with_config(config.add_parser("check", help="validate a configuration and compile its policy")).set_defaults(
        handler=cmd_config_check
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
