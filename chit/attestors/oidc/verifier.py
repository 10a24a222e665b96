"""OIDC issuers' tokens, verified against each issuer's keys and mapped to facts.

The checks, in order: the issuer (exact `iss`, routed by `chit.attestors.routing`),
the signature with the issuer's key (the algorithm is the key's, RFC 8725 §3.1),
the validity window and the issuer's lifetime cap, an accepted audience, the
issuer's `required_claims`, the typed facts and the subject, and last the `jti`:
RFC 7519 §4.1.7 "The "jti" claim can be used to prevent the JWT from being
replayed", so a token that has one is accepted once, until it expires.
"""

from __future__ import annotations

import hashlib
from typing import Any

from chit.attestors.base import Attestation, InvalidEvidence, JwtVerifier
from chit.attestors.jose import LEEWAY_SECONDS, CompactJws, audiences, check_validity_window, verify_signature
from chit.attestors.jwks import KeySource, issuer_key_source
from chit.attestors.oidc import KIND
from chit.attestors.oidc.config import OidcIssuer, OidcSettings
from chit.attestors.oidc.mapping import SubjectTemplate, facts_of
from chit.attestors.single_use import SingleUse, unused
from chit.state import StateStore

MAX_JTI = 256


class IssuerTrust:
    """One configured issuer: its keys, audiences, mapping and rules."""

    def __init__(self, config: OidcIssuer):
        self.config = config
        self.name = config.name
        self.issuer = config.issuer_url
        self.audiences = frozenset(config.audiences)
        self.max_lifetime = config.lifetime_cap
        self.facts = config.fact_claims
        self.subject = SubjectTemplate(config.subject_template)
        self.required_claims = {claim: frozenset(values) for claim, values in config.required_claims.items()}
        self.keys: KeySource = issuer_key_source(
            issuer=self.issuer,
            jwks_uri=config.jwks_uri,
            jwks_file=config.jwks_file,
            discovery=config.uses_discovery,
            ca_file=config.ca_file,
            label=f"OIDC issuer {config.name}",
        )


class OidcVerifier(JwtVerifier):
    """Verifies the tokens of every configured OIDC issuer."""

    kind = KIND

    def __init__(self, config: OidcSettings, *, trust_domain: str, state: StateStore):
        self.trust_domain = trust_domain
        self.state = state
        self.trusted = {i.issuer_url: IssuerTrust(i) for i in config.issuers}

    @property
    def issuers(self) -> frozenset[str]:
        return frozenset(self.trusted)

    async def verify_jws(self, jws: CompactJws, now: float) -> Attestation:
        trust = self.trusted[jws.claims["iss"]]
        key = await trust.keys.key(jws.kid)
        verify_signature(jws, key.key, key.algorithm)
        claims = jws.claims
        expires_at = check_validity_window(claims, now, trust.max_lifetime, require_nbf=False)
        if not trust.audiences.intersection(audiences(claims)):
            raise InvalidEvidence("audience not accepted for this issuer")
        for claim, allowed in trust.required_claims.items():
            if claims.get(claim) not in allowed:
                raise InvalidEvidence(f"claim {claim} is not one this server accepts from issuer {trust.name}")
        facts = facts_of(claims, trust.facts)
        workload = trust.subject.expand(facts)
        replay_guard = await self._replay_guard(trust, claims, expires_at, now)
        facts.update(issuer=trust.issuer, issuer_name=trust.name, workload=workload)
        if trust.config.preset is not None:
            facts["preset"] = trust.config.preset
        return Attestation(
            kind=KIND,
            subject=f"spiffe://{self.trust_domain}/oidc/{trust.name}/{workload}",
            facts=facts,
            claims=claims,
            att={"issuer_name": trust.name, "workload": workload},
            expires_at=expires_at,
            replay_guard=replay_guard,
        )

    async def _replay_guard(self, trust: IssuerTrust, claims: Any, expires_at: float, now: float) -> SingleUse | None:
        """A `jti` is accepted once per issuer, until the token expires (and the leeway)."""
        if "jti" not in claims:
            return None
        jti = claims["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
            raise InvalidEvidence("claim jti is not a string")
        digest = hashlib.sha256(f"{trust.issuer}\0{jti}".encode()).hexdigest()
        return await unused(self.state, f"oidc:jti:{digest}", expires_at - now + LEEWAY_SECONDS, "jti")

    async def close(self) -> None:
        for trust in self.trusted.values():
            await trust.keys.close()
