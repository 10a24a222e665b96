"""The `attestors.oidc` section of chit's configuration: OIDC issuers, each from a
preset (`github`, `gitlab`, `buildkite`) or described in full."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from chit.attestors.oidc.mapping import FACT_NAME, RESERVED_FACTS, SubjectTemplate
from chit.attestors.oidc.presets import PRESETS, ClaimType, FactClaim, PresetName
from chit.section import DnsLabel, FilePath, PositiveInt, Section
from chit.urls import require_safe_url

_CLAIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")


class Fact(Section):
    """A fact read from a claim (`claim` defaults to the fact's own name)."""

    claim: str | None = None
    type: ClaimType = "string"
    required: bool = False

    @field_validator("claim")
    @classmethod
    def _claim(cls, value: str | None) -> str | None:
        if value is not None and not _CLAIM_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a claim name")
        return value


class OidcIssuer(Section):
    name: DnsLabel
    preset: PresetName | None = None
    issuer: str | None = None  # None: the preset's
    jwks_uri: str | None = None
    jwks_file: FilePath | None = None
    discovery: bool | None = None  # None: true unless jwks_uri or jwks_file is set
    ca_file: FilePath | None = None  # CAs for the key source's TLS; None: the system's
    audiences: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    max_token_lifetime_seconds: PositiveInt | None = None  # None: the preset's, else 3600
    subject: str | None = None  # None: the preset's template
    facts: dict[str, Fact] = {}  # beside (or replacing) the preset's
    # Claims whose value must be one of these (strings), e.g. the one organization
    # of a shared issuer; a token without the claim is refused.
    required_claims: dict[str, Annotated[list[str], Field(min_length=1)]] = {}

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, value: str | None) -> str | None:
        return None if value is None else require_safe_url(value, "jwks_uri")

    @field_validator("facts")
    @classmethod
    def _facts(cls, value: dict[str, Fact]) -> dict[str, Fact]:
        for name in value:
            if not FACT_NAME.fullmatch(name) or name in RESERVED_FACTS:
                raise ValueError(f"{name!r} cannot be a fact name (lowercase letters, digits, '_'; not {', '.join(sorted(RESERVED_FACTS))})")
        return value

    @field_validator("required_claims")
    @classmethod
    def _required_claims(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for claim in value:
            if not _CLAIM_NAME.fullmatch(claim):
                raise ValueError(f"{claim!r} is not a claim name")
        return value

    @model_validator(mode="after")
    def _complete(self) -> OidcIssuer:
        if self.preset is None:
            for key in ("issuer", "subject"):
                if getattr(self, key) is None:
                    raise ValueError(f"{key} is required without a preset")
        issuer = self.issuer_url
        if sum([self.jwks_uri is not None, self.jwks_file is not None, self.discovery is True]) > 1:
            raise ValueError("set at most one of jwks_uri, jwks_file, discovery: true")
        if self.uses_discovery:
            require_safe_url(issuer, "issuer (with discovery)")
        elif not issuer.strip():
            raise ValueError("issuer must not be empty")
        try:
            SubjectTemplate(self.subject_template).check(self.fact_claims)
        except ValueError as error:
            raise ValueError(str(error)) from None
        return self

    @property
    def issuer_url(self) -> str:
        return self.issuer if self.issuer is not None else PRESETS[self.preset].issuer  # type: ignore[index]

    @property
    def uses_discovery(self) -> bool:
        return self.discovery if self.discovery is not None else (self.jwks_uri is None and self.jwks_file is None)

    @property
    def subject_template(self) -> str:
        return self.subject if self.subject is not None else PRESETS[self.preset].subject  # type: ignore[index]

    @property
    def lifetime_cap(self) -> int:
        if self.max_token_lifetime_seconds is not None:
            return self.max_token_lifetime_seconds
        return PRESETS[self.preset].max_token_lifetime_seconds if self.preset else 3600

    @property
    def fact_claims(self) -> dict[str, FactClaim]:
        """The preset's facts, with this issuer's own added or replacing them."""
        facts: dict[str, Any] = dict(PRESETS[self.preset].facts) if self.preset else {}
        for name, fact in self.facts.items():
            facts[name] = FactClaim(fact.claim or name, fact.type, fact.required)
        return facts


class OidcSettings(Section):
    issuers: list[OidcIssuer] = []

    @model_validator(mode="after")
    def _unique(self) -> OidcSettings:
        for what, values in (("name", [i.name for i in self.issuers]), ("issuer", [i.issuer_url for i in self.issuers])):
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"issuer {what} must be unique, repeated: {', '.join(duplicates)}")
        return self
