"""Strict JSON: what chit parses from others (evidence, policy data, a policy engine's answer).

Python's `json` lets the last of two duplicate keys win, reads NaN and
Infinity, and holds integers of any size; a forged document or a confused
component could use each of these to mean one thing to chit and another to
whoever reads it next (the policy engine's integers are 64-bit). Each is
refused here with a message that names it and is safe to show a caller.
"""

from __future__ import annotations

import json
import math
from typing import Any


class StrictJSONError(ValueError):
    """Why a JSON text was refused, in words safe to return to a caller."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError(f"duplicate JSON member {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    raise StrictJSONError(f"invalid JSON number {name}")


def _bounded_int(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise StrictJSONError("JSON integer out of range")
    return value


def _finite_float(text: str) -> float:
    # 1e999 would parse as infinity, which JSON cannot carry on.
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError("JSON number out of range")
    return value


def strict_json(text: str) -> Any:
    """Parse JSON refusing duplicate members, NaN/Infinity and integers beyond 64 bits.

    Raises ValueError (StrictJSONError names the offending member or number)."""
    return json.loads(
        text,
        object_pairs_hook=_reject_duplicates,
        parse_constant=_reject_constant,
        parse_int=_bounded_int,
        parse_float=_finite_float,
    )


def strict_json_object(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object parsed with `strict_json`, UTF-8 only; StrictJSONError says why not, naming `what`."""
    try:
        value = strict_json(data.decode("utf-8"))
    except StrictJSONError as error:
        raise StrictJSONError(f"{what}: {error}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
        raise StrictJSONError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise StrictJSONError(f"{what} is not a JSON object")
    return value
