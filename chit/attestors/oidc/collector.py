"""The CI collectors (agent side, standard library only): the runner's OIDC token for
chit's audience, fresh for every exchange.

- GitHub Actions: a job with `permissions: id-token: write` has
  `ACTIONS_ID_TOKEN_REQUEST_URL` and `ACTIONS_ID_TOKEN_REQUEST_TOKEN`; a GET of
  the URL with `&audience=AUDIENCE` and `Authorization: bearer TOKEN` answers
  `{"value": "<the token>"}` (GitHub's "OpenID Connect" documentation, as
  `core.getIDToken(audience)` does).
- GitLab CI: the job's `id_tokens` keyword puts a token with the `aud` it names
  in the variable it names; the CLI passes that variable's value.
- Buildkite: `buildkite-agent oidc request-token --audience AUDIENCE` prints one.
"""

from __future__ import annotations

import subprocess
from typing import Mapping
from urllib.parse import urlencode, urlsplit

from chit.attestors.base import CollectionFailed, Collector, InvalidEvidence, PlatformAbsent, SubjectToken, evidence_object, printable
from chit.attestors.oidc import KIND
from chit.httpclient import TransportError, request
from chit.protocol import TOKEN_TYPE_JWT

GITHUB_URL_ENV = "ACTIONS_ID_TOKEN_REQUEST_URL"
GITHUB_TOKEN_ENV = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
DEFAULT_GITLAB_VARIABLE = "CHIT_ID_TOKEN"
BUILDKITE_AGENT_ENV = "BUILDKITE_AGENT_ACCESS_TOKEN"
MAX_ANSWER = 64 * 1024
BUILDKITE_TIMEOUT = 30.0


def _jwt(token: str, where: str) -> SubjectToken:
    token = token.strip()
    if token.count(".") != 2 or not token.isascii() or not token.isprintable() or len(token) > MAX_ANSWER:
        raise CollectionFailed(f"{where} is not an OIDC token (a JWT)")
    return SubjectToken(token, TOKEN_TYPE_JWT)


class GitHubActionsCollector(Collector):
    """An ID token from the Actions runtime for `audience`."""

    kind = KIND

    def __init__(self, audience: str, request_url: str | None, request_token: str | None):
        self.audience = audience
        self.request_url = request_url
        self.request_token = request_token

    def collect(self) -> SubjectToken:
        if not self.request_url or not self.request_token:
            raise PlatformAbsent(
                f"not a GitHub Actions job with an ID token (${GITHUB_URL_ENV} and ${GITHUB_TOKEN_ENV} are set "
                "only for jobs with permissions: id-token: write)"
            )
        if urlsplit(self.request_url).scheme not in ("https", "http"):
            raise CollectionFailed(f"${GITHUB_URL_ENV} is not an http(s) URL")
        separator = "&" if "?" in self.request_url else "?"
        url = self.request_url + separator + urlencode({"audience": self.audience})
        headers = {"Authorization": f"bearer {self.request_token}", "Accept": "application/json; api-version=2.0"}
        try:
            response = request("GET", url, headers=headers, max_bytes=MAX_ANSWER)
        except (TransportError, ValueError) as error:
            raise CollectionFailed(f"GitHub's ID token service did not answer ({error})") from None
        if response.status != 200:
            raise CollectionFailed(f"GitHub's ID token service refused a token: HTTP {response.status} {printable(response.text)}")
        try:
            value = evidence_object(response.body, "GitHub's answer").get("value")
        except InvalidEvidence as error:
            raise CollectionFailed(f"GitHub's ID token service answered {error}") from None
        if not isinstance(value, str):
            raise CollectionFailed("GitHub's ID token service answered without a value")
        return _jwt(value, "GitHub's answer")


class GitLabCollector(Collector):
    """The token GitLab put in the job's `id_tokens` variable `variable`."""

    kind = KIND

    def __init__(self, variable: str, value: str | None):
        self.variable = variable
        self.value = value

    def collect(self) -> SubjectToken:
        if not self.value:
            raise PlatformAbsent(f"no GitLab ID token in ${self.variable} (declare it under the job's id_tokens, with chit's aud)")
        return _jwt(self.value, f"${self.variable}")


class BuildkiteCollector(Collector):
    """`buildkite-agent oidc request-token --audience AUDIENCE` in a Buildkite job."""

    kind = KIND

    def __init__(self, audience: str, environ: Mapping[str, str], agent: str = "buildkite-agent"):
        self.audience = audience
        self.environ = environ
        self.agent = agent

    def collect(self) -> SubjectToken:
        if not self.environ.get(BUILDKITE_AGENT_ENV):
            raise PlatformAbsent(f"not a Buildkite job (${BUILDKITE_AGENT_ENV} is not set)")
        command = [self.agent, "oidc", "request-token", "--audience", self.audience]
        try:
            # The job's own environment: the agent reads its access token and endpoint there.
            done = subprocess.run(command, capture_output=True, timeout=BUILDKITE_TIMEOUT, env=dict(self.environ), check=False)
        except FileNotFoundError:
            raise CollectionFailed(f"{self.agent} is not on this job's PATH") from None
        except (OSError, subprocess.TimeoutExpired) as error:
            raise CollectionFailed(f"{self.agent} oidc request-token failed: {type(error).__name__}") from None
        if done.returncode != 0:
            raise CollectionFailed(f"{self.agent} oidc request-token exited with {done.returncode}: {printable(done.stderr.decode(errors='replace'))}")
        return _jwt(done.stdout.decode("ascii", errors="replace"), f"{self.agent}'s answer")
