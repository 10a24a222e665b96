"""`chit doctor`: a configuration checked against the world it names
(docs/operators/doctor.md).

`chit config check` says whether the file is valid; the doctor asks every
dependency the file names whether it answers, the way chit itself will ask
it, with the same clients and time budgets: the state store (and each
sentinel), the policy engine, each cluster's keys (JWKS, discovery or file)
and API server permissions, AWS's STS, Google's certificates and credentials;
it reads the TLS certificate and the signing keys, and warns about values
left from the examples. One finding per check, with the reason of each
failure; nothing secret is printed (URLs lose their passwords).

It changes nothing: it creates no signing key, writes no state, and issues
no token.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Literal

from chit.server.config import Config

# Past this age the active signing key is due for rotation (docs/operators/keys.md
# "How often"; the ChitSigningKeyRotationOverdue alert uses the same figure).
KEY_ROTATION_DAYS = 90
# A certificate closer than this to its end is worth a warning (cert-manager renews at 2/3 of its life).
CERTIFICATE_WARNING_DAYS = 14
# What the examples and the documentation use, which a real deployment never does.
_PLACEHOLDERS = (
    (re.compile(r"(^|[./@])example\.(org|com|net)($|[/:.])", re.IGNORECASE), "an example domain (RFC 2606)"),
    (re.compile(r"EXAMPLE"), "EXAMPLE, the documentation's placeholder"),
    (re.compile(r"\.invalid($|[/:])"), "a .invalid name (RFC 2606), which never resolves"),
    (re.compile(r"\b(123456789012|111122223333|444455556666)\b"), "an account id from AWS's documentation"),
)

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result: `check` names what was checked, `detail` what was found or why it failed."""

    check: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status.upper() if self.status != 'ok' else 'ok':4}  {self.check}: {self.detail}"


def ok(check: str, detail: str) -> Finding:
    return Finding(check, "ok", detail)


def warn(check: str, detail: str) -> Finding:
    return Finding(check, "warn", detail)


def fail(check: str, detail: str) -> Finding:
    return Finding(check, "fail", detail)


# --- placeholders -----------------------------------------------------------------------------


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value


def placeholders(config: Config) -> list[Finding]:
    """Values left from the examples (`example.org`, `EXAMPLE…`, `.invalid`, AWS's sample
    account ids): valid, so `chit config check` accepts them, and wrong in production."""
    if config.dev:
        return []  # --dev is the example
    findings = []
    document = config.model_dump(mode="json", exclude={"dev"})
    document["state"].pop("redis_url", None)  # may carry a password; its host is checked with the state store
    for key, value in _strings(document, ""):
        for pattern, what in _PLACEHOLDERS:
            if pattern.search(value):
                findings.append(warn("placeholder", f"{key} is {value!r}: {what}; replace it with your own value"))
                break
    return findings


# --- files ----------------------------------------------------------------------------------


def _days(seconds: float) -> str:
    return f"{seconds / 86400:.0f} days"


def tls(config: Config, now: float) -> list[Finding]:
    """listen.tls: the certificate and key load as chit serve loads them, and the certificate is in date."""
    if config.listen.tls is None:
        return [ok("tls", "listen.tls not set: plain HTTP (chit serve refuses it beyond loopback unless listen.plain_http)")]
    from chit.serving.tls import CertificateError, load_context

    try:
        _, leaf = load_context(config.listen.tls)
    except CertificateError as error:
        return [fail("tls", str(error))]
    subject = leaf.subject.rfc4514_string() or "(no subject)"
    not_before, not_after = leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp()
    until = _dt.datetime.fromtimestamp(not_after, _dt.timezone.utc).strftime("%Y-%m-%d")
    if now < not_before:
        return [fail("tls", f"{subject} is not valid yet (from {_dt.datetime.fromtimestamp(not_before, _dt.timezone.utc):%Y-%m-%d})")]
    if now >= not_after:
        return [fail("tls", f"{subject} expired on {until}")]
    if not_after - now < CERTIFICATE_WARNING_DAYS * 86400:
        return [warn("tls", f"{subject} expires on {until}, in {_days(not_after - now)}: is its renewal running?")]
    return [ok("tls", f"{subject}, valid until {until} ({_days(not_after - now)})")]


def signing_keys(config: Config, now: float) -> list[Finding]:
    """signing.keys_dir: the keys load, one of each series (signing.algorithms) is active, and none is
    overdue for rotation. An empty directory is fine if chit may create the first keys there."""
    from chit.server.keys import KeySeries, KeyStore, SigningKeyError

    keys_dir = config.signing.keys_dir
    if not keys_dir.is_dir() or not any(keys_dir.glob("signing-*.pem")):
        parent = keys_dir if keys_dir.is_dir() else next((p for p in keys_dir.parents if p.exists()), Path("/"))
        if os.access(parent, os.W_OK | os.X_OK):
            return [warn("signing keys", f"no key in {keys_dir} yet: chit serve creates the first one (each replica its own "
                         "unless the directory is shared; see docs/operators/keys.md)")]
        return [fail("signing keys", f"no key in {keys_dir}, and none can be created there ({parent} is not writable)")]
    try:
        store = KeyStore(keys_dir, KeySeries(config.signing.series))
    except SigningKeyError as error:
        return [fail("signing keys", str(error))]
    loaded = len(store.keys)
    findings = []
    for algorithm in config.signing.series:
        active = store.signing_key(now, algorithm)
        if active is None:
            findings.append(fail(f"signing keys {algorithm}", f"{loaded} key(s) in {keys_dir} but no {algorithm} key is active "
                                 "(unreadable, or all activate later; chit keys rotate --algorithm)"))
            continue
        age = now - active.activates_at
        detail = f"{loaded} key(s) in {keys_dir}; {active.kid} signs, active for {_days(age)}"
        if age > KEY_ROTATION_DAYS * 86400:
            findings.append(warn(f"signing keys {algorithm}", f"{detail}: rotation overdue (more than {KEY_ROTATION_DAYS} days; chit keys rotate)"))
        else:
            findings.append(ok(f"signing keys {algorithm}", detail))
    return findings


def audit_sink(config: Config) -> list[Finding]:
    sink = config.audit.sink
    if sink == "stdout":
        return [ok("audit", "to standard output")]
    path = Path(sink)
    target = path if path.exists() else path.parent
    if os.access(target, os.W_OK):
        return [ok("audit", f"appended to {path}")]
    return [fail("audit", f"{path} cannot be written ({target} is not writable)")]


# --- dependencies over the network --------------------------------------------------------------


async def state(config: Config) -> list[Finding]:
    """The state store answers PING; through Sentinel, each sentinel answers for the service;
    with wait_for_replicas, enough replicas are online for a write to be acknowledged."""
    settings = config.state
    if settings.backend == "memory":
        return [ok("state", "in memory: one process only (--workers 1, one replica)")]
    from chit.state import RedisStore, StateUnavailable, build_state_store

    findings = []
    if settings.sentinel is not None:
        findings += await _sentinels(config)
    try:
        store = build_state_store(settings)
    except ValueError as error:
        return [*findings, fail("state", str(error))]
    assert isinstance(store, RedisStore)
    try:
        await store.ping()
        replicas = await store.replicas()
    except StateUnavailable as error:
        return [*findings, fail("state", f"{settings.where()}: {error}")]
    finally:
        await store.close()
    detail = f"{settings.where()} answers; {replicas} replica(s) online"
    if replicas < settings.wait_for_replicas:
        findings.append(fail("state", f"{detail}, fewer than state.wait_for_replicas {settings.wait_for_replicas}: "
                                      "every revocation and nonce binding would be refused (503)"))
    elif settings.sentinel is not None and replicas == 0:
        findings.append(warn("state", f"{detail}: a failover has no replica to promote"))
    else:
        findings.append(ok("state", detail))
    return findings


async def _sentinels(config: Config) -> list[Finding]:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError

    from chit.state import parse_address, read_password

    sentinel = config.state.sentinel
    assert sentinel is not None
    timeout = config.state.timeout_ms / 1000
    try:
        password = None if sentinel.password_file is None else read_password(sentinel.password_file, "state.sentinel.password_file")
    except ValueError as error:
        return [fail("sentinel", str(error))]
    findings = []
    for address in sentinel.addresses:
        host, port = parse_address(address)
        client = Redis(host=host, port=port, password=password, socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 0), decode_responses=True)
        try:
            primary = await client.sentinel_master(sentinel.service)
        except RedisError as error:
            findings.append(fail("sentinel", f"{address}: {type(error).__name__}: {error}"))
            continue
        finally:
            await client.aclose()
        flags = str(primary.get("flags", ""))
        if primary.get("is_sdown") or primary.get("is_odown"):
            findings.append(fail("sentinel", f"{address}: the primary of {sentinel.service!r} is down ({flags})"))
        else:
            findings.append(ok("sentinel", f"{address}: primary of {sentinel.service!r} at {primary['ip']}:{primary['port']}, "
                                           f"{primary.get('num-slaves', 0)} replica(s), {primary.get('num-other-sentinels', 0)} other sentinel(s)"))
    return findings


async def policy(config: Config) -> list[Finding]:
    """The embedded engine compiles the policy; OPA is healthy and defines data.chit.decision."""
    from chit.policy import PolicyEvaluationError, PolicyUnavailable, build_engine
    from chit.policy.bundle import PolicyLoadError

    settings = config.policy
    try:
        engine = build_engine(settings)
    except PolicyLoadError as error:
        return [fail("policy", str(error))]
    try:
        reason = await engine.unready_reason()
        if reason is not None:
            return [fail("policy", reason)]
        if settings.engine == "embedded":
            return [ok("policy", f"embedded engine, the policy in {settings.dir or 'the shipped policies'} compiles")]
        from chit.policy.opa import DECISION_PATH, OpaEngine

        assert isinstance(engine, OpaEngine)
        try:
            decision = await engine.query(DECISION_PATH, {})
        except (PolicyUnavailable, PolicyEvaluationError) as error:
            return [fail("policy", f"OPA at {settings.opa_url}: asking data.chit.decision: {error}")]
        if decision is None:
            return [fail("policy", f"OPA at {settings.opa_url} is healthy but does not define data.chit.decision "
                                   "(is chit's policy loaded into it?)")]
        return [ok("policy", f"OPA at {settings.opa_url} is healthy and defines data.chit.decision")]
    finally:
        await engine.close()


async def _keys(check: str, source: Any, where: str) -> Finding:
    """A key source refreshed as chit refreshes it (KeySource.refresh), then closed."""
    from chit.attestors.base import EvidenceUnavailable

    try:
        count = await source.refresh()
        if count:
            return ok(check, f"{where}: {count} usable key(s)")
        return fail(check, f"{where}: no usable key (every entry was skipped; see the log)")
    except EvidenceUnavailable as error:
        return fail(check, f"{where}: {error}")
    finally:
        await source.close()


async def clusters(config: Config) -> list[Finding]:
    """Each cluster's keys as chit fetches them; its API server, with the permissions its checks need."""
    from chit.attestors.kubernetes.verifier import key_source

    findings = []
    for cluster in config.attestors.kubernetes.clusters:
        where = cluster.jwks_uri or (f"{cluster.issuer} (discovery)" if cluster.discovery else str(cluster.jwks_file))
        findings.append(await _keys(f"cluster {cluster.name} keys", key_source(cluster), where))
        if cluster.token_review or cluster.pod_lookup:
            findings += await _cluster_api(cluster)
    return findings


async def oidc_issuers(config: Config) -> list[Finding]:
    """Each OIDC issuer's keys as chit fetches them (its JWKS, discovery or file)."""
    from chit.attestors.oidc.verifier import IssuerTrust

    findings = []
    for issuer in config.attestors.oidc.issuers:
        where = issuer.jwks_uri or (f"{issuer.issuer_url} (discovery)" if issuer.uses_discovery else str(issuer.jwks_file))
        findings.append(await _keys(f"oidc issuer {issuer.name} keys", IssuerTrust(issuer).keys, where))
    return findings


async def aws_iam(config: Config) -> list[Finding]:
    """Each STS endpoint aws-iam requests may name answers chit's client: an unsigned
    GetCallerIdentity, which STS refuses (the refusal is its answer); no answer fails."""
    settings = config.attestors.aws_iam
    if not settings.enabled:
        return []
    from chit.attestors.aws_iam import GET_CALLER_IDENTITY
    from chit.attestors.aws_iam.caller import get_caller_identity, sts_client
    from chit.attestors.aws_iam.request import CheckedRequest
    from chit.attestors.base import EvidenceUnavailable, InvalidEvidence

    timeout = settings.timeout_ms / 1000
    client = sts_client(timeout)
    findings = []
    try:
        for endpoint in settings.sts_endpoints:
            unsigned = CheckedRequest(endpoint, {"Content-Type": "application/x-www-form-urlencoded"}, GET_CALLER_IDENTITY, "", 0.0)
            try:
                await get_caller_identity(client, unsigned, timeout)
                findings.append(ok("aws_iam sts", f"{endpoint} answers (an unsigned request accepted: not AWS's STS, which checks signatures)"))
            except InvalidEvidence as refused:
                findings.append(ok("aws_iam sts", f"{endpoint} answers ({str(refused).removeprefix('STS refused the signed request: ')} to an unsigned request)"))
            except EvidenceUnavailable as error:
                findings.append(fail("aws_iam sts", str(error)))
    finally:
        await client.aclose()
    return findings


async def _cluster_api(cluster: Any) -> list[Finding]:
    from chit.attestors.base import EvidenceUnavailable

    check = f"cluster {cluster.name} API"
    try:
        from chit.attestors.kubernetes.api import ClusterApi

        api = ClusterApi(cluster)
    except ValueError as error:
        return [fail(check, str(error))]
    needed = []
    if cluster.token_review:
        needed.append(("create", "tokenreviews", "authentication.k8s.io", "token_review"))
    if cluster.pod_lookup:
        needed.append(("get", "pods", "", "pod_lookup"))
    findings = []
    try:
        for verb, resource, group, option in needed:
            try:
                allowed = await api.allowed(verb, resource, group)
            except (EvidenceUnavailable, OSError) as error:
                findings.append(fail(check, f"{option}: {error}"))
                continue
            if allowed:
                findings.append(ok(check, f"{option}: chit may {verb} {resource}"))
            else:
                findings.append(fail(check, f"{option}: chit's credential may not {verb} {resource} "
                                            "(the ClusterRole in deploy/base/rbac.yaml grants it)"))
    finally:
        await api.close()
    return findings


async def aws(config: Config) -> list[Finding]:
    """STS answers with chit's own identity, when chit needs AWS credentials of its own
    (`assume_role` mode, `verify_instance`); in `web_identity` mode STS answers at all."""
    iid = config.attestors.aws_iid
    if not ((iid.enabled and (iid.verify_instance or iid.describe_roles)) or "aws" in config.model_fields_set):
        return []  # nothing configured calls AWS (STS credentials come with an `aws` section)
    from chit.aws import AwsClients, AwsRefused, AwsUnavailable

    settings = config.aws
    needs_credentials = settings.sts_mode == "assume_role" or config.attestors.aws_iid.verify_instance
    where = settings.endpoint_url or f"STS in {settings.region}"
    clients = AwsClients(settings)
    try:
        answer = await clients.call("sts", settings.region, "get_caller_identity", {}, unsigned=not needs_credentials)
    except AwsUnavailable as error:
        return [fail("aws", f"{where}: {error}")]
    except AwsRefused as error:
        if needs_credentials:
            return [fail("aws", f"{where}: chit's AWS credentials are refused: {error.code}")]
        return [ok("aws", f"{where} answers (web_identity mode: chit's own AWS credentials are not needed)")]
    return [ok("aws", f"{where}: chit's AWS identity is {answer.get('Arn')}")]


async def google(config: Config) -> list[Finding]:
    """Google's certificates as chit fetches them; with verify_instance, an access token from
    chit's Application Default Credentials."""
    gcp = config.attestors.gcp
    if not gcp.enabled:
        return []
    from chit.attestors.base import EvidenceUnavailable
    from chit.attestors.gcp.certificates import GoogleCertificates
    from chit.attestors.jwks import http_client

    findings = []
    certificates = GoogleCertificates(gcp.certs_url, http_client())
    try:
        count = await certificates.refresh()
        findings.append(ok("gcp certificates", f"{gcp.certs_url}: {count} certificate(s)"))
    except EvidenceUnavailable as error:
        findings.append(fail("gcp certificates", str(error)))
    finally:
        await certificates.close()
    if gcp.verify_instance:
        from chit.attestors.gcp.compute import ComputeEngine

        try:
            compute = ComputeEngine.with_default_credentials(gcp)
        except ValueError as error:
            return [*findings, fail("gcp credentials", str(error))]
        try:
            await compute.authorization()
            findings.append(ok("gcp credentials", "an access token for the Compute Engine API was issued"))
        except EvidenceUnavailable as error:
            findings.append(fail("gcp credentials", str(error)))
        finally:
            await compute.close()
    return findings


# --- all of them ------------------------------------------------------------------------------------


async def examine(config: Config, now: float | None = None) -> list[Finding]:
    """Every check, the network ones concurrently; findings in a fixed order."""
    now = time.time() if now is None else now
    local = [*placeholders(config), *tls(config, now), *signing_keys(config, now), *audit_sink(config)]
    remote: list[Callable[[Config], Awaitable[list[Finding]]]] = [state, policy, clusters, oidc_issuers, aws, aws_iam, google]
    results = await asyncio.gather(*(check(config) for check in remote))
    return local + [finding for findings in results for finding in findings]
