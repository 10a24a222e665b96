"""An issuer's claims, mapped to chit: typed facts for the policy and the SPIFFE subject.

Claims are read only after the signature, issuer, audience and lifetime have been
checked. A fact's claim must have the JSON type the mapping names (a number where
a string is expected refuses the token: a policy comparing `"74"` must never meet
`74`), and a required fact must be there and not `null`. A value that goes into
the subject must be a SPIFFE path segment as it is, so no `/`, `..` or other
character can change whose subject it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from chit.attestors.base import InvalidEvidence
from chit.attestors.oidc.presets import FactClaim

MAX_STRING = 1024
MAX_LIST = 256
# SPIFFE ID path segments: "letters, numbers, dots, dashes, and underscores" (SPIFFE-ID §2.2).
SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,255}")
PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]{0,63})\}")
FACT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Facts chit sets itself; a mapping may not name them.
RESERVED_FACTS = frozenset({"kind", "claims", "issuer", "issuer_name", "preset", "workload", "region"})


def fact_value(claims: Mapping[str, Any], fact: str, spec: FactClaim) -> Any:
    """The claim `spec.claim` as a fact of `spec.type`; None when absent or null and
    not required; InvalidEvidence for a wrong type or a missing required claim."""
    value = claims.get(spec.claim)
    if value is None:
        if spec.required:
            raise InvalidEvidence(f"claim {spec.claim} missing")
        return None
    where = f"claim {spec.claim}"
    if spec.type == "string":
        if not isinstance(value, str) or len(value) > MAX_STRING:
            raise InvalidEvidence(f"{where} is not a string (of at most {MAX_STRING} characters)")
        return value
    if spec.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**53) < value < 2**53:
            raise InvalidEvidence(f"{where} is not an integer")
        return value
    if spec.type == "boolean":
        if not isinstance(value, bool):
            raise InvalidEvidence(f"{where} is not a boolean")
        return value
    if spec.type == "string_boolean":
        # GitLab writes booleans as the strings "true" and "false"; nothing else is one.
        if value not in ("true", "false"):
            raise InvalidEvidence(f'{where} is not "true" or "false"')
        return value == "true"
    if not isinstance(value, list) or len(value) > MAX_LIST or not all(isinstance(v, str) and len(v) <= MAX_STRING for v in value):
        raise InvalidEvidence(f"{where} is not a list of strings")
    return list(value)


def facts_of(claims: Mapping[str, Any], mapping: Mapping[str, FactClaim]) -> dict[str, Any]:
    """Every mapped fact the token has (absent and null claims leave the fact absent)."""
    facts = {}
    for fact, spec in mapping.items():
        value = fact_value(claims, fact, spec)
        if value is not None:
            facts[fact] = value
    return facts


@dataclass(frozen=True, slots=True)
class SubjectTemplate:
    """The path of a subject after `/oidc/ISSUER_NAME/`: literal segments and `{fact}`
    placeholders, e.g. `{repository_owner_id}/{repository_id}`."""

    template: str

    @property
    def placeholders(self) -> list[str]:
        return PLACEHOLDER.findall(self.template)

    def check(self, mapping: Mapping[str, FactClaim]) -> None:
        """ValueError unless every placeholder is a required string or integer fact and
        the literal text is made of path-segment characters."""
        literal = PLACEHOLDER.sub("x", self.template)
        if not all(SEGMENT.fullmatch(segment) and segment not in (".", "..") for segment in literal.split("/")):
            raise ValueError(f"subject {self.template!r}: segments of letters, digits, '.', '-', '_' and {{fact}} placeholders, joined by '/'")
        if not self.placeholders:
            raise ValueError(f"subject {self.template!r} names no fact: every workload of the issuer would be one subject")
        for name in self.placeholders:
            spec = mapping.get(name)
            if spec is None or not spec.required or spec.type not in ("string", "integer"):
                raise ValueError(f"subject {self.template!r}: {{{name}}} must be a required string or integer fact")

    def expand(self, facts: Mapping[str, Any]) -> str:
        def value(match: re.Match[str]) -> str:
            text = str(facts[match.group(1)])
            if not SEGMENT.fullmatch(text) or text in (".", ".."):
                raise InvalidEvidence(f"claim {match.group(1)} cannot be part of a subject (letters, digits, '.', '-', '_' only)")
            return text

        path = PLACEHOLDER.sub(value, self.template)
        if any(segment in ("", ".", "..") for segment in path.split("/")):
            raise InvalidEvidence("the claims make an empty or relative subject path")
        return path
