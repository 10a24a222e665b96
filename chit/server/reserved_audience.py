"""The reserved audience (docs/reference/http-api.md "Reserved audience"): "`sts.amazonaws.com` is only
ever the audience of the web-identity JWTs chit mints for its own
`AssumeRoleWithWebIdentity` call: an ordinary exchange can neither request it nor
be granted it (400 `invalid_target`)."

Otherwise a workload could get an ordinary chit token for STS and call
`AssumeRoleWithWebIdentity` itself, past `decision.aws`, the session policy and
the 900 s cap. Requests are refused while they are parsed (`server.token_request`),
decisions right after they are applied (`server.exchange`).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from chit.server.errors import PolicyDeniedTarget

WEB_IDENTITY_AUDIENCE = "sts.amazonaws.com"

# STS compares a web identity token's `aud` exactly with the client IDs registered on
# the IAM OIDC provider of chit's issuer. The convention, and what chit mints, is
# `sts.amazonaws.com`, but which forms an operator registered is not chit's to know
# (upper case, a URL, a trailing slash or dot, a regional or FIPS endpoint, the China
# partition's `sts.amazonaws.com.cn`), and no resource server is named after STS. So
# every audience whose host is an STS endpoint is reserved, compared case-insensitively.
_STS_HOST = re.compile(r"sts(-fips)?(\.[a-z0-9-]+)?\.amazonaws\.com(\.cn)?")


def is_reserved_audience(value: str) -> bool:
    """True for `sts.amazonaws.com` in any form that names an STS endpoint."""
    text = value.strip()
    hosts = {text.lower().rstrip("/.")}
    try:
        host = urlsplit(text if "://" in text else "//" + text).hostname  # lower-cased
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        host = None
    if host:
        hosts.add(host.rstrip("."))
    return any(_STS_HOST.fullmatch(h) for h in hosts)


def refuse_reserved_grant(audience: tuple[str, ...]) -> None:
    """A decision may list the reserved audience, but it never becomes a token's `audience`.

    Requested targets were refused while parsing, so this catches the default: "none
    requested → the first of `decision.audience`" (docs/reference/policy-contract.md "Policy contract").
    """
    reserved = [a for a in audience if is_reserved_audience(a)]
    if reserved:
        raise PolicyDeniedTarget(
            "the permitted audience is reserved",
            detail=f"decision.audience grants the reserved audience {reserved[0]!r}: only chit's own "
            "AssumeRoleWithWebIdentity tokens carry it (docs/reference \"Reserved audience\")",
        )
