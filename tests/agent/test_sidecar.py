"""`chit agent`, the sidecar, as a process against real chit servers: files
renewed across several short lifetimes and a chit outage, always whole, always
0600, never holding an expired credential; renewals logged without token
material; a clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import jwt
import pytest

from chit.agent.sidecar import BACKOFF_MAX, REMOVE_BEFORE_EXPIRY, backoff
from chit.agent.cli import parse_file_spec
from tests.agent.conftest import CACHE, DB
from tests.conftest import TEST_BINDINGS, cluster_config
from tests.factories import (
    AgentProcess,
    ChitServer,
    ClusterIssuer,
    DocumentServer,
    HangingServer,
    HttpRelay,
    TestCertificateAuthority,
    closed_port_url,
    copy_policy,
    proxy_env,
    run_chit,
    wait_until,
)


@dataclass
class Reading:
    at: float  # when the read began
    content: str | None  # None: no file


@dataclass
class FileWatcher:
    """Reads a file every 20 ms for as long as a test runs, keeping what it saw and
    every broken promise: a mode other than 0600, a credential that `check` refuses
    (incomplete, badly signed), or one that had expired when the read began."""

    path: Path
    check: Callable[[str], float]  # the credential's expiry (raises if the content is not a credential)
    readings: list[Reading] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while self.running:
            began = time.time()
            try:
                descriptor = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                self.readings.append(Reading(began, None))
            else:
                with os.fdopen(descriptor, encoding="utf-8") as file:
                    mode = os.fstat(descriptor).st_mode & 0o777
                    content = file.read()
                self.readings.append(Reading(began, content))
                if mode != 0o600:
                    self.problems.append(f"mode {mode:o}")
                try:
                    expires = self.check(content)
                except Exception as error:  # noqa: BLE001 — every failure is a finding
                    self.problems.append(f"unusable content ({type(error).__name__}: {error})")
                else:
                    if expires <= began:
                        self.problems.append(f"expired {began - expires:.2f} s before it was read")
            time.sleep(0.02)

    def credentials(self) -> list[str]:
        """Every distinct content seen, in order."""
        return list(dict.fromkeys(r.content for r in self.readings if r.content is not None))

    def stop(self) -> None:
        self.running = False
        self.thread.join(timeout=5)


def token_checker(server: ChitServer, audience: str) -> Callable[[str], float]:
    keys = {k["kid"]: jwt.PyJWK(k) for k in server.jwks()["keys"]}  # the keys survive a restart (same keys_dir)

    def check(token: str) -> float:
        key = keys[jwt.get_unverified_header(token)["kid"]]
        # Signature and audience; the expiry is the watcher's to judge, at the time the read began.
        claims = jwt.decode(token, key, algorithms=["ES256"], audience=audience, options={"verify_exp": False})
        return float(claims["exp"])

    return check


def json_checker(server: ChitServer, audience: str) -> Callable[[str], float]:
    check_token = token_checker(server, audience)

    def check(content: str) -> float:
        body = json.loads(content)
        exp = check_token(body["access_token"])
        assert body["expires_at"] <= exp
        return exp

    return check


@pytest.fixture
def short_lived_chit(tmp_path: Path, documents: DocumentServer, prod_issuer: ClusterIssuer) -> Iterator[ChitServer]:
    """chit minting 10-second tokens: renewals come every ~6 s."""
    policy = copy_policy(tmp_path / "policies", TEST_BINDINGS)
    config = {
        "trust_domain": "example.org",
        "policy": {"dir": str(policy)},
        "tokens": {"ttl_seconds": 10},
        "attestors": {"kubernetes": {"clusters": cluster_config(documents, Path("/nonexistent"))[:1]}},
    }
    server = ChitServer(tmp_path / "chit", config).start()
    yield server
    server.stop()


def test_files_stay_fresh_across_lifetimes_and_an_outage(short_lived_chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    chit = short_lived_chit
    subject = prod_issuer.token()
    (tmp_path / "token").write_text(subject)
    out = tmp_path / "run" / "chit"
    agent = AgentProcess(
        tmp_path, "--server", chit.url, "--kubernetes", "--subject-token-file", str(tmp_path / "token"),
        "--audience", DB, "--scope", "read:db",
        "--file", str(out / "db.token"),
        "--file", f"{out / 'cache.json'},audience={CACHE},output=json",
    )
    db = FileWatcher(out / "db.token", token_checker(chit, DB))
    cache = FileWatcher(out / "cache.json", json_checker(chit, CACHE))
    try:
        # Two lifetimes: the first token and its renewal.
        wait_until(lambda: len(db.credentials()) >= 2 and len(cache.credentials()) >= 2, 40, "two renewals", agent)

        # An outage: the credential in place stays while it is valid, then goes.
        chit.terminate()
        outage_began, before_outage = time.time(), db.credentials()[-1]
        wait_until(lambda: not (out / "db.token").exists(), 30, "db.token removed during the outage", agent)
        assert any(r.content == before_outage and r.at > outage_began for r in db.readings), "removed before it expired"
        assert "renewing" in agent.log() and "temporarily_unavailable" in agent.log()

        # chit is back: renewal resumes (backoff at most 30 s) and goes on for two more lifetimes.
        chit.start()
        seen = len(db.credentials())
        wait_until(lambda: len(db.credentials()) >= seen + 2, 80, "two renewals after the outage", agent)
        assert agent.terminate() == 0
    finally:
        agent.kill()
        db.stop()
        cache.stop()

    assert db.problems == [] and cache.problems == []
    assert not (out / "db.token").exists() and not (out / "cache.json").exists()  # removed on exit
    assert out.stat().st_mode & 0o777 == 0o700
    log = agent.log()
    assert log.count(f"renewed {out / 'db.token'}: access_token, for {DB}, scope read:db") >= 4
    assert f"removed {out / 'db.token'}: its credential expires" in log and "stopped; removed" in log
    # No token material in the log: not the subject token, nor any credential or part of one.
    credentials = db.credentials() + [json.loads(c)["access_token"] for c in cache.credentials()]
    for token in [subject, *credentials]:
        for part in token.split(".")[1:]:
            assert part not in log
    assert agent.stdout.read_text() == ""


def test_the_agent_follows_its_ca_file(tls_chit: ChitServer, tls_ca: TestCertificateAuthority, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    """A CA bundle mounted from a ConfigMap changes under a running agent (a CA rotation):
    the agent reads it again, no restart."""
    (tmp_path / "token").write_text(prod_issuer.token())
    ca_file = TestCertificateAuthority("not chit's CA").write(tmp_path / "ca.crt")
    out = tmp_path / "run" / "db.token"
    agent = AgentProcess(tmp_path, "--server", tls_chit.url, "--ca-file", str(ca_file), "--subject-token-file", str(tmp_path / "token"),
                         "--audience", DB, "--file", str(out))
    try:
        agent.wait_for_log("chit's TLS certificate is not trusted")
        assert not out.exists()
        tls_ca.write(ca_file)
        wait_until(out.exists, 40, "a credential once the CA file holds chit's CA", agent)
        token_checker(tls_chit, DB)(out.read_text())
        assert agent.terminate() == 0
    finally:
        agent.kill()
    assert "Traceback" not in agent.log()


def test_without_chit_nothing_is_written_and_a_stale_file_goes(prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(prod_issuer.token())
    stale = tmp_path / "db.token"
    stale.write_text("a token an earlier run left behind")
    agent = AgentProcess(tmp_path, "--server", closed_port_url(), "--subject-token-file", str(tmp_path / "token"), "--file", str(stale))
    try:
        agent.wait_for_log("failed (2 in a row): temporarily_unavailable")
        assert not stale.exists()
        assert agent.terminate() == 0
    finally:
        agent.kill()
    assert "removed " + str(stale) + ", left by an earlier run" in agent.log()


def test_sigterm_does_not_wait_for_a_hanging_chit(prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(prod_issuer.token())
    hanging = HangingServer()
    agent = AgentProcess(tmp_path, "--server", hanging.url, "--timeout", "120", "--subject-token-file", str(tmp_path / "token"), "--file", str(tmp_path / "t"))
    try:
        agent.wait_for_log("keeping 1 file(s) fresh")
        time.sleep(0.5)  # the exchange is under way and will not be answered
        began = time.time()
        assert agent.terminate(timeout=20) == 0
        assert time.time() - began < 10
    finally:
        agent.kill()
        hanging.stop()


def test_a_refused_file_does_not_hold_up_the_others(chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(prod_issuer.token())
    good, refused = tmp_path / "good.token", tmp_path / "refused.token"
    agent = AgentProcess(tmp_path, "--server", chit.url, "--subject-token-file", str(tmp_path / "token"),
                  "--file", f"{good},audience={DB}", "--file", f"{refused},scope=admin")
    try:
        agent.wait_for_log(f"renewing {refused} failed (1 in a row): invalid_scope")
        wait_until(good.exists, 10, "the good file", agent)
        assert not refused.exists()
        chit.verify_issued(good.read_text(), DB)
        assert agent.terminate() == 0
    finally:
        agent.kill()
    decision_id = agent.log().split("invalid_scope: ")[1].split("(decision_id ")[1].split(")")[0]
    assert chit.audit_for(decision_id)["outcome"] == "denied"


def test_proxy_variables_are_ignored_and_an_explicit_proxy_is_used(chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    """The subject token goes to no proxy the environment names (clusters inject them), only to --proxy."""
    (tmp_path / "token").write_text(prod_issuer.token())
    decoy, chosen = HttpRelay(forward=False), HttpRelay()
    common = ["--server", chit.url, "--subject-token-file", str(tmp_path / "token"), "--audience", DB]
    try:
        for name, extra in (("direct", []), ("proxied", ["--proxy", chosen.url])):
            (tmp_path / name).mkdir()
            out = tmp_path / name / "db.token"
            agent = AgentProcess(tmp_path / name, *common, *extra, "--file", str(out), env=proxy_env(decoy.url))
            try:
                wait_until(out.exists, 20, f"{out}", agent)
                chit.verify_issued(out.read_text(), DB)
                assert agent.terminate() == 0
            finally:
                agent.kill()
    finally:
        decoy.stop()
        chosen.stop()
    assert decoy.requests == []
    assert chosen.requests == [f"POST {chit.url}/token HTTP/1.1"]


def test_a_credential_too_short_lived_to_keep_is_never_written(tmp_path: Path, documents: DocumentServer, prod_issuer: ClusterIssuer) -> None:
    config = {
        "policy": {"dir": str(copy_policy(tmp_path / "policies", TEST_BINDINGS))},
        "tokens": {"ttl_seconds": int(REMOVE_BEFORE_EXPIRY)},
        "attestors": {"kubernetes": {"clusters": cluster_config(documents, Path("/nonexistent"))[:1]}},
    }
    chit = ChitServer(tmp_path / "chit", config).start()
    (tmp_path / "token").write_text(prod_issuer.token())
    agent = AgentProcess(tmp_path, "--server", chit.url, "--subject-token-file", str(tmp_path / "token"), "--file", str(tmp_path / "t"))
    try:
        agent.wait_for_log("failed (2 in a row): invalid_request: chit issued a credential that expires in")
        assert not (tmp_path / "t").exists()
        assert agent.terminate() == 0
    finally:
        agent.kill()
        chit.stop()


# --- the command line and the schedule ------------------------------------------------------------


def test_file_specs_name_a_path_then_options() -> None:
    path, options = parse_file_spec(f"/run/chit/db.token,audience={DB},audience={CACHE},scope=read:db write:db,output=json")
    assert path == Path("/run/chit/db.token")
    assert options == {"audience": [DB, CACHE], "scope": ["read:db write:db"], "output": ["json"]}


@pytest.mark.parametrize("spec", [",audience=x", "/f,colour=blue", "/f,audience", "/f,audience=", "/f,output=json,output=env"])
def test_malformed_file_specs_are_usage_errors(spec: str, tmp_path: Path) -> None:
    result = run_chit("agent", "--server", "http://127.0.0.1:1", "--file", spec)
    assert result.returncode == 2 and "--file" in result.stderr


def test_agent_usage_errors_name_the_file(tmp_path: Path) -> None:
    same = run_chit("agent", "--server", "http://127.0.0.1:1", "--file", "/a", "--file", "/a,scope=x")
    assert same.returncode == 2 and "each --file needs its own path" in same.stderr
    mismatch = run_chit("agent", "--server", "http://127.0.0.1:1", "--file", "/a,output=credential-process,token-type=jwt")
    assert mismatch.returncode == 2 and "--file /a: output credential-process needs token-type aws-credentials" in mismatch.stderr


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    rng = random.Random(6)
    for failures, ceiling in [(1, 1), (2, 2), (3, 4), (5, 16), (6, BACKOFF_MAX), (40, BACKOFF_MAX)]:
        delays = [backoff(failures, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not fixed
