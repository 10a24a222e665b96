"""`single_use: true`: an accepted token is remembered until it expires (docs/operators/gcp.md "GCP")."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping


def claims_digest(claims: Mapping[str, Any]) -> str:
    """A token's identity for single use: the hash of its verified claims, not of its
    encoding (so no re-encoding of the same signed claims counts as another token)."""
    canonical = json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
