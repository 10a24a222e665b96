"""The `chit` command line."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, NoReturn, Sequence

from chit.protocol import TOKEN_TYPE_JWT
from chit.server import CONFIG_ENV, RESOLVED_CONFIG_ENV

if TYPE_CHECKING:
    from chit.policy.coverage import ModuleCoverage
    from chit.policy.testing import PolicyTestResult
    from chit.server.config import Config
    from chit.server.logs import Log
    from chit.state import StateStore
    from chit.serving.tls import ReloadingCertificate


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"chit: {message}", file=sys.stderr)
    raise SystemExit(code)


def config_from_args(args: argparse.Namespace, environ: dict[str, str] = os.environ) -> Config:  # type: ignore[assignment]
    """--config FILE, else $CHIT_CONFIG."""
    from chit.server.config import ConfigError, load_config

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
        if base is None or "format" not in base.log.model_fields_set:
            # A person reads a --dev server's log: text, unless the file says otherwise.
            config = config.model_copy(update={"log": config.log.model_copy(update={"format": "text"})})
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
    if config.attestors.aws_iam.enabled:
        users.append("signed AWS requests accepted once (attestors.aws_iam.enabled)")
    if config.attestors.oidc.issuers:
        users.append("OIDC tokens accepted once by their jti (attestors.oidc.issuers)")
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
    import logging
    import logging.config

    from chit.server import tracing
    from chit.server.app import build_exchange
    from chit.server.errors import OAuthError
    from chit.server.keys import SigningKeyError
    from chit.server.logs import log_config
    from chit.policy.bundle import PolicyLoadError
    from chit.serving.run import run_uvicorn
    from chit.serving.tls import CertificateError, ReloadingCertificate

    tls = config.listen.tls
    try:
        # Fail here, once, with a readable message, rather than in every worker.
        tracing.check_available(config.tracing)
        exchange = build_exchange(config)
        certificate = None if tls is None else ReloadingCertificate(tls)
    except (PolicyLoadError, SigningKeyError, ValueError, OSError, OAuthError, CertificateError, tracing.TracingUnavailable) as error:
        fail(str(error))
    exchange.audit.close()
    # From here on this process logs as its workers do (a failed start above is one plain line).
    logging.config.dictConfig(log_config(config.log))
    log = logging.getLogger("chit.serve")
    os.environ[RESOLVED_CONFIG_ENV] = config.model_dump_json()
    base_url = f"{'http' if tls is None else 'https'}://{config.listen.host}:{config.listen.port}"
    mode = "dev mode" if config.dev else "production mode"
    log.info("chit %s: listening on %s (%s worker(s)); issuer %s", mode, base_url, args.workers, config.issuer)
    if config.listen.plain_http:
        log.warning(
            "listen.plain_http is true: plain HTTP on %s:%s, subject tokens and issued tokens cross the network "
            "in clear unless something else encrypts them", config.listen.host, config.listen.port,
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
    from chit.server.logs import log_config

    run_uvicorn(
        "chit.server.app:app_from_environment",
        config.listen.host,
        config.listen.port,
        args.workers,
        certificate,
        log_config(config.log),
    )


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


def _optional_config(args: argparse.Namespace) -> Config | None:
    return config_from_args(args) if (getattr(args, "config", None) or os.environ.get(CONFIG_ENV)) else None


def _policy_dirs(args: argparse.Namespace, config: Config | None) -> list[Path]:
    """The directories given, else `policy.dir` and `policy.extra_dirs` of the configuration,
    else the shipped policies."""
    from chit.policy import policy_dirs
    from chit.policy.bundle import shipped_policy_dir

    given = getattr(args, "dirs", None) or ([args.dir] if getattr(args, "dir", None) else [])
    if given:
        return [Path(d) for d in given]
    return policy_dirs(config.policy) if config else [shipped_policy_dir()]


def _engine(args: argparse.Namespace, config: Config | None) -> tuple[str, str]:
    """--engine/--opa-url, else the configured ones, else the embedded engine."""
    engine = args.engine or (config.policy.engine if config else "embedded")
    return engine, args.opa_url or (config.policy.opa_url if config else "http://127.0.0.1:8181")


class TestPrinter:
    """Streams `chit policy test` results as they complete, then the summary."""

    RULE = "-" * 60

    def __init__(self, verbose: bool):
        self.verbose = verbose

    def __call__(self, result: PolicyTestResult) -> None:
        if self.verbose or result.status != "PASS":
            print(f"{result.status}: {result.rule} ({result.milliseconds:.1f} ms)", flush=True)
            if result.status == "ERROR":
                for line in result.detail:
                    print(f"  {line}", flush=True)

    def failures(self, results: list[PolicyTestResult], details: dict[str, tuple[str, ...]]) -> None:
        failed = [r for r in results if r.status == "FAIL"]
        if not failed:
            return
        print(f"{self.RULE}\nFAILURES")
        for result in failed:
            print(f"{result.rule} ({result.test.where})")
            for line in details.get(result.rule) or result.detail or ("the test's rule is not true",):
                print(f"  {line}")

    def summary(self, results: list[PolicyTestResult], seconds: float, compile_seconds: float | None) -> None:
        print(self.RULE)
        total = len(results)
        for status in ("PASS", "FAIL", "ERROR"):
            count = sum(r.status == status for r in results)
            if count or status == "PASS":
                print(f"{status}: {count}/{total}")
        compiled = f"; compiling: {compile_seconds:.2f} s" if compile_seconds is not None else ""
        print(f"{total} tests in {seconds:.2f} s ({seconds / total * 1000:.1f} ms per test{compiled})")


def _print_coverage(modules: list[ModuleCoverage]) -> None:
    from chit.policy.coverage import line_ranges

    print(f"{TestPrinter.RULE}\nCOVERAGE: lines of rule bodies selected in some test (docs/policy/testing.md#coverage)")
    covered = sum(len(m.covered) for m in modules)
    measured = covered + sum(len(m.not_covered) for m in modules)
    for module in modules:
        measured_lines = len(module.covered) + len(module.not_covered)
        print(f"{module.module}: {module.percent:.1f}% ({len(module.covered)}/{measured_lines} lines)")
        if module.not_covered:
            print(f"  not covered: {line_ranges(module.not_covered)}")
        if module.not_measured:
            print(f"  not measured (functions, rules without a body): {line_ranges(module.not_measured)}")
    print(f"total: {100.0 * covered / measured if measured else 100.0:.1f}% ({covered}/{measured} lines)")


async def _opa_tests(args: argparse.Namespace, opa_url: str, dirs: list[Path], select: re.Pattern[str] | None, printer: TestPrinter) -> list[PolicyTestResult]:
    from chit.policy.testing import OpaQueries, require_same_modules, run_opa_tests

    queries = OpaQueries(opa_url)
    try:
        await queries.load()
        if args.dirs:
            require_same_modules(dirs, queries)
        return await run_opa_tests(queries, select, printer)
    finally:
        await queries.close()


def cmd_policy_test(args: argparse.Namespace) -> None:
    """Exit codes as `opa test --fail-on-empty`: 0 every test passed, 2 a test failed or
    errored, 1 the tests could not be run (nothing to run, a policy that does not load)."""
    import asyncio

    from chit.policy import PolicyUnavailable
    from chit.policy.bundle import PolicyLoadError, load_policy_dir
    from chit.policy.plancache import PlanCache, default_directory
    from chit.policy.testing import EmbeddedTests

    started = time.perf_counter()
    config = _optional_config(args)
    dirs = _policy_dirs(args, config)
    engine, opa_url = _engine(args, config)
    try:
        select = re.compile(args.run) if args.run else None
    except re.error as error:
        fail(f"--run {args.run!r} is not a regular expression: {error}", 1)
    printer = TestPrinter(args.verbose)
    suite = None
    try:
        if engine == "opa":
            if args.coverage:
                fail("--coverage is measured by the embedded engine only (OPA's REST API has no coverage)", 1)
            results = asyncio.run(_opa_tests(args, opa_url, dirs, select, printer))
        else:
            bundle = load_policy_dir(dirs[0], require_decision=False, extra_dirs=dirs[1:])
            directory = None if args.no_cache else default_directory(os.environ)
            suite = EmbeddedTests(bundle, select, coverage=args.coverage, cache=PlanCache(directory) if directory else None)
            if not suite.tests:
                fail("no test_ rules match --run" if select else "no test_ rules found", 1)
            results = suite.run(printer)
    except (PolicyLoadError, PolicyUnavailable) as error:
        fail(str(error), 1)
    if not results:
        fail("no test_ rules match --run" if select else "no test_ rules found", 1)
    printer.failures(results, suite.explain_failures(results) if suite is not None else {})
    printer.summary(results, time.perf_counter() - started, suite.compile_seconds if suite is not None else None)
    if suite is not None and args.coverage:
        _print_coverage(suite.coverage_report())
    raise SystemExit(0 if all(r.status == "PASS" for r in results) else 2)


def _eval_config(args: argparse.Namespace) -> Config:
    """--config (or $CHIT_CONFIG), --dev (as `chit serve --dev`), or the defaults; --dir and
    --engine/--opa-url override its policy section."""
    from chit.server.config import parse_config
    from chit.server.dev import dev_config

    config = _optional_config(args)
    if args.dev:
        if not (Path(args.state_dir) / "dev-cluster" / "key.pem").is_file():
            fail(f"no development cluster under {args.state_dir}: start `chit serve --dev` first (eval creates none)")
        config = dev_config(Path(args.state_dir), "127.0.0.1", 8400, config)
    elif config is None:
        config = parse_config({"issuer": "http://127.0.0.1:8400", "signing": {"keys_dir": ".chit/keys"}}, "(chit policy eval defaults)", Path.cwd())
    policy = {}
    if args.dir:
        policy["dir"] = Path(args.dir)
    if args.engine:
        policy["engine"] = args.engine
    if args.opa_url:
        policy["opa_url"] = args.opa_url
    return config.model_copy(update={"policy": config.policy.model_copy(update=policy)}) if policy else config


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8") if path != "-" else sys.stdin.read()
    except (OSError, UnicodeDecodeError) as error:
        fail(f"cannot read {what} {path}: {error}")
        raise  # unreachable


async def _explain(config: Config, policy_input: dict[str, Any]) -> dict[str, Any]:
    from chit.policy import policy_bundle
    from chit.policy.testing import EmbeddedExplainer, OpaQueries, explain_on_opa

    if config.policy.engine == "embedded":
        return EmbeddedExplainer(policy_bundle(config.policy)).explain(policy_input)
    queries = await OpaQueries(config.policy.opa_url).load()
    try:
        return await explain_on_opa(queries, policy_input)
    finally:
        await queries.close()


def _document_request(document: dict[str, Any], name: str | None) -> dict[str, Any]:
    """`request` and `now.unix` of an input document, checked."""
    request = document.get("request") or {}
    given: dict[str, Any] = {}
    if not isinstance(request, dict):
        fail(f"input {name}: request must be an object")
    for key in ("scope", "audience", "resource"):
        values = request.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            fail(f"input {name}: request.{key} must be an array of strings")
        if values:
            given[key] = tuple(values)
    if request.get("requested_token_type") is not None:
        given["requested_token_type"] = str(request["requested_token_type"])
    if request.get("actor") is not None:
        fail(f"input {name}: request.actor is set, but chit policy eval takes no actor token")
    unix = (document.get("now") or {}).get("unix") if isinstance(document.get("now"), dict) else None
    if unix is not None:
        if isinstance(unix, bool) or not isinstance(unix, (int, float)):
            fail(f"input {name}: now.unix must be a number")
        given["now"] = float(unix)
    return given


def cmd_policy_eval(args: argparse.Namespace) -> None:
    """Prints the server's answer (`status`: 200 when it would issue a credential); exits 0
    when it has one, 1 when eval cannot run (a policy that does not load, OPA down), 2 on
    a usage error."""
    import asyncio

    from chit.policy import PolicyUnavailable
    from chit.policy.bundle import PolicyLoadError
    from chit.server.policy_eval import EvalRequest, evaluate_exchange, parse_now
    from chit.strictjson import strict_json

    config = _eval_config(args)
    document: dict[str, Any] | None = None
    token = None
    if args.input is not None:
        try:
            document = strict_json(_read_text(args.input, "input"))
        except ValueError as error:
            fail(f"input {args.input} is not a JSON document: {error}")
        if not isinstance(document, dict):
            fail(f"input {args.input} must be a JSON object (an input document: subject, attestation, …)")
    else:
        token = _read_text(args.subject_token, "subject token").strip()
    # An input document's request and time are the defaults of the flags (an input eval
    # printed can be given back); its actor cannot be: eval takes no actor token.
    given = _document_request(document or {}, args.input)
    try:
        now = parse_now(args.now, given.get("now", time.time()))
    except ValueError as error:
        fail(str(error))
    request = EvalRequest(
        subject_token=token,
        subject_token_type=args.subject_token_type,
        scope=tuple(args.scope.split()) if args.scope is not None else given.get("scope", ()),
        audience=tuple(args.audience) if args.audience else given.get("audience", ()),
        resource=tuple(args.resource) if args.resource else given.get("resource", ()),
        requested_token_type=args.requested_token_type or given.get("requested_token_type"),
    )

    async def run() -> dict[str, Any]:
        answer = await evaluate_exchange(config, request, now, document=document, network=args.network)
        result = answer.document()
        if args.explain and answer.policy_input is not None:
            result["explain"] = await _explain(config, answer.policy_input)
        return result

    try:
        result = asyncio.run(run())
    except ValueError as error:
        fail(f"input {args.input}: {error}", 1)
    except (PolicyLoadError, PolicyUnavailable, OSError) as error:
        fail(str(error), 1)
    print(json.dumps(result, indent=2, default=str))


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


# --- chit doctor -----------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> None:
    """Every dependency the configuration names, asked as chit asks it: one line per check,
    the reason of each failure; exit 1 if any check failed (warnings do not fail)."""
    import asyncio

    from chit.server.doctor import examine

    config = config_from_args(args)
    print(f"chit doctor: {args.config or os.environ.get(CONFIG_ENV)}")
    findings = asyncio.run(examine(config))
    for finding in findings:
        print(finding.line())
    failed = sum(f.status == "fail" for f in findings)
    warned = sum(f.status == "warn" for f in findings)
    print(f"chit doctor: {failed} failed, {warned} warning(s), {len(findings) - failed - warned} ok")
    raise SystemExit(1 if failed else 0)


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
    test.add_argument("dirs", nargs="*", metavar="DIR", help="policy directories, the first one the policy (default: policy.dir and policy.extra_dirs, else the shipped policies)")
    test.add_argument("-v", "--verbose", action="store_true", help="list every test as it completes, passing ones too")
    test.add_argument("-r", "--run", metavar="REGEX", help="run only the tests whose name (data.pkg.test_x) matches REGEX")
    test.add_argument("-c", "--coverage", action="store_true", help="report which lines of the policy the tests exercised (embedded engine)")
    test.add_argument("--no-cache", action="store_true", help="compile every plan afresh (default: reuse the plans of unchanged tests, from $XDG_CACHE_HOME/chit/plans)")
    with_engine(test)
    test.set_defaults(handler=cmd_policy_test)
    evaluate = with_config(policy.add_parser("eval", help="the server's answer to one exchange, from a subject token or an input document"))
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--subject-token", metavar="FILE", help="a subject token ('-': stdin), verified as the server verifies it")
    source.add_argument("--input", metavar="FILE", help="an input document ('-': stdin): its subject, attestation and images stand for verified facts")
    evaluate.add_argument("--subject-token-type", default=TOKEN_TYPE_JWT, metavar="URN", help="default: the JWT token type")
    evaluate.add_argument("--scope", metavar="'A B'", help="the requested scope (space-separated)")
    evaluate.add_argument("--audience", action="append", metavar="URI", help="a requested audience (repeatable)")
    evaluate.add_argument("--resource", action="append", metavar="URI", help="a requested resource (repeatable)")
    evaluate.add_argument("--requested-token-type", metavar="URN", help="default: an access token")
    evaluate.add_argument("--now", metavar="RFC3339", help="the time of the exchange (default: now), e.g. 2026-11-24T10:00:00Z")
    evaluate.add_argument("--dir", help="policy directory (default: policy.dir, else the shipped policies)")
    evaluate.add_argument("--dev", action="store_true", help="the configuration of `chit serve --dev` (its development cluster)")
    evaluate.add_argument("--state-dir", default=".chit", help="with --dev: where the development cluster lives")
    evaluate.add_argument("--network", action="store_true", help="let the verification reach other hosts (JWKS, Google's keys, platform APIs); default: loopback only")
    evaluate.add_argument("--explain", action="store_true", help="also print which branch decided and every rule's value")
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

    doctor = with_config(commands.add_parser(
        "doctor", help="check a configuration against the world: Redis, OPA, cluster keys and APIs, AWS, Google, files"))
    doctor.set_defaults(handler=cmd_doctor)

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
