"""How a token is minted for its audience: the signing algorithm and a lifetime cap
(`tokens.audiences`, docs/reference/configuration.md "tokens").

Relying parties differ in what they accept. OpenID Connect Discovery 1.0 §3 makes
RS256 the one algorithm every relying party must accept ("The algorithm RS256
MUST be included"), so an LLM provider federating with chit is given RS256
tokens by naming its audience here; the policy still decides whether the
workload gets the audience at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from chit.server.config import MAX_TOKEN_TTL, AudienceTokens
from chit.server.errors import InvalidTarget


@dataclass(frozen=True, slots=True)
class TokenProfile:
    algorithm: str
    ttl_seconds: int


def token_profile(audiences: tuple[str, ...], configured: Mapping[str, AudienceTokens], default_algorithm: str) -> TokenProfile:
    """The one algorithm every granted audience is signed with, and the lowest of their caps.

    A token has one signature: audiences configured with different algorithms cannot
    share it, so such a request is refused rather than signed for one of them."""
    algorithms = {(configured[a].algorithm if a in configured else None) or default_algorithm for a in audiences}
    if len(algorithms) > 1:
        raise InvalidTarget(
            "the requested audiences are signed with different algorithms; request a token for each",
            detail=f"algorithms {sorted(algorithms)} for audiences {list(audiences)} (tokens.audiences)",
        )
    caps = [configured[a].ttl_seconds for a in audiences if a in configured and configured[a].ttl_seconds is not None]
    return TokenProfile(algorithms.pop() if algorithms else default_algorithm, min([MAX_TOKEN_TTL, *caps]))
