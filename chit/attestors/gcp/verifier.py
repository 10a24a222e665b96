"""The GCP verifier: every check of a Google identity token, in order."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from chit import metrics
from chit.attestors.base import Attestation, EvidenceUnavailable, InvalidEvidence, JwtVerifier
from chit.attestors.gcp import ISSUERS, KIND
from chit.attestors.gcp.certificates import ALGORITHM, GoogleCertificates, verify_with_google_auth
from chit.attestors.gcp.claims import compute_engine_facts, service_account
from chit.attestors.gcp.compute import ComputeEngine, instance_facts
from chit.attestors.gcp.config import GcpSettings
from chit.attestors.gcp.single_use import claims_digest
from chit.attestors.jose import LEEWAY_SECONDS, CompactJws, check_validity_window
from chit.attestors.jwks import http_client
from chit.attestors.single_use import unused
from chit.state import StateStore

log = logging.getLogger("chit.gcp")

MAX_TOKEN_LIFETIME = 3600  # docs/reference/http-api.md "Leeway": GCP subject JWTs live at most 1 h


class GcpVerifier(JwtVerifier):
    """Verifies Google-signed Compute Engine identity tokens (`iss` accounts.google.com)."""

    kind = KIND

    def __init__(self, config: GcpSettings, *, trust_domain: str, issuer: str, state: StateStore):
        self.config = config
        self.trust_domain = trust_domain
        # No configured audience means chit's own issuer URL, never "any audience".
        self.audiences: tuple[str, ...] = tuple(config.audiences) or (issuer,)
        self.project_ids = None if config.project_ids is None else frozenset(config.project_ids)
        self.state = state
        self.certificates = GoogleCertificates(config.certs_url, http_client())
        # Credentials are found now, so that a server that could never look an
        # instance up does not start; the access token is fetched on first use.
        self.compute = ComputeEngine.with_default_credentials(config) if config.verify_instance else None

    @property
    def issuers(self) -> frozenset[str]:
        return ISSUERS

    async def verify_jws(self, jws: CompactJws, now: float) -> Attestation:
        claims = jws.claims
        if claims.get("iss") not in ISSUERS:
            raise InvalidEvidence("issuer not trusted")
        if jws.alg != ALGORITHM:
            # Before any key is looked at: alg none, HS256 with the certificate as
            # secret, ES256 — Google signs identity tokens with RS256 only.
            raise InvalidEvidence(f"algorithm {jws.alg!r} is not accepted for Google tokens (RS256 only)")
        if jws.kid is None:
            raise InvalidEvidence("header kid missing")
        # Claims are checked before the certificates are fetched, so that a token
        # that could never be accepted costs no request to Google.
        expires_at = check_validity_window(claims, now, MAX_TOKEN_LIFETIME, require_nbf=False)
        if claims.get("aud") not in self.audiences:
            # Exactly one configured audience, as a string; `azp` never stands in for it.
            raise InvalidEvidence("audience not accepted")

        certificate = await self.certificates.certificate(jws.kid)
        verify_with_google_auth(jws.raw, certificate, self.audiences)

        # What the token says about the workload is read only once it is verified
        # (nor does an unsigned token learn anything about the allowlist).
        email_address, sub = service_account(claims)
        instance = compute_engine_facts(claims)
        if instance is None and self.config.require_full_format:
            raise InvalidEvidence("claim google.compute_engine missing: request the token with format=full")
        if self.project_ids is not None and (instance is None or instance["project_id"] not in self.project_ids):
            raise InvalidEvidence("project not allowed on this server")

        replay_guard = None
        if self.config.single_use:
            key = f"gcp:once:{claims_digest(claims)}"
            replay_guard = await unused(self.state, key, expires_at - now + LEEWAY_SECONDS, "single_use")

        facts: dict[str, Any] = {"issuer": claims["iss"], **(instance or {}), "email": email_address, "sub": sub}
        if instance is None:
            subject = f"spiffe://{self.trust_domain}/gcp/sa/{email_address}"
            att: dict[str, Any] = {"email": email_address}
        else:
            subject = f"spiffe://{self.trust_domain}/gcp/{instance['project_id']}/{instance['zone']}/{instance['instance_id']}"
            att = {k: instance[k] for k in ("project_id", "zone", "instance_id")}
        return Attestation(
            kind=KIND,
            subject=subject,
            facts=facts,
            claims=claims,
            att=att,
            expires_at=expires_at,
            replay_guard=replay_guard,
        )

    async def enrich(self, attestation: Attestation) -> Attestation:
        """`verify_instance`: the Compute Engine API must show the instance the token
        names — same id, name and creation time — provisioning, staging or running."""
        if self.compute is None:
            return attestation
        facts = attestation.facts
        if "instance_id" not in facts:
            # The config refuses verify_instance without require_full_format; never skip the check.
            raise InvalidEvidence("claim google.compute_engine missing: verify_instance needs a format=full token")
        try:
            instance = await self.compute.instance(facts["project_id"], facts["zone"], facts["instance_id"])
            extra = instance_facts(instance, facts)
        except InvalidEvidence:
            metrics.INSTANCE_LOOKUPS.labels(KIND, "invalid").inc()
            raise
        except EvidenceUnavailable:
            metrics.INSTANCE_LOOKUPS.labels(KIND, "error").inc()
            raise
        metrics.INSTANCE_LOOKUPS.labels(KIND, "ok").inc()
        return dataclasses.replace(attestation, facts={**facts, **extra})

    async def close(self) -> None:
        await self.certificates.close()
        if self.compute is not None:
            await self.compute.close()


# --- the Compute Engine API (verify_instance) -------------------------------------------


# --- the collector (client side) -----------------------------------------------------


