"""OIDC issuers: CI runners (GitHub Actions, GitLab CI, Buildkite) and any issuer an
operator configures, generalising what the Kubernetes attestor does for cluster issuers.

A token is routed by its exact `iss` to one configured issuer, verified with that
issuer's keys (JWKS URL, discovery or file: `chit.attestors.jwks`), its audience
required and its lifetime capped; its claims become typed facts and a SPIFFE
subject through the issuer's mapping, and a `jti` is accepted once.

- `presets`: what GitHub Actions, GitLab CI and Buildkite issue, from their documentation;
- `config`: the `attestors.oidc` section: issuers, each from a preset or from scratch;
- `mapping`: claims to facts (typed) and to the subject (a template);
- `verifier`: the checks in order;
- `collector`: the agent side, the runner's token (GitHub's request URL, GitLab's
  `id_tokens` variable, `buildkite-agent oidc request-token`).
"""

KIND = "oidc"
