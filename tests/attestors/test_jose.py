"""attestors.jose in isolation: boundaries the server tests cannot pin to the second."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chit.attestors.base import InvalidEvidence
from chit.attestors.jose import algorithm_for_key, check_validity_window, parse_compact_jws, verify_signature

NOW = 1_800_000_000


def claims(**values: float) -> dict:
    base = {"iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 600}
    base.update(values)
    return base


def test_exp_equal_to_now_is_expired() -> None:
    with pytest.raises(InvalidEvidence, match="expired"):
        check_validity_window(claims(exp=NOW), NOW, 3600, require_nbf=True)
    assert check_validity_window(claims(exp=NOW + 1), NOW, 3600, require_nbf=True) == NOW + 1


def test_leeway_is_exactly_60_seconds_on_nbf_and_iat() -> None:
    check_validity_window(claims(nbf=NOW + 60, iat=NOW + 60), NOW, 3600, require_nbf=True)
    with pytest.raises(InvalidEvidence, match="not yet valid"):
        check_validity_window(claims(nbf=NOW + 61), NOW, 3600, require_nbf=True)
    with pytest.raises(InvalidEvidence, match="issued in the future"):
        check_validity_window(claims(iat=NOW + 61), NOW, 3600, require_nbf=True)


def test_lifetime_cap_is_inclusive() -> None:
    check_validity_window(claims(iat=NOW, exp=NOW + 3600), NOW, 3600, require_nbf=True)
    with pytest.raises(InvalidEvidence, match="lifetime"):
        check_validity_window(claims(iat=NOW, exp=NOW + 3601), NOW, 3600, require_nbf=True)


def test_nbf_is_optional_only_when_allowed() -> None:
    without = {"iat": NOW, "exp": NOW + 60}
    check_validity_window(without, NOW, 3600, require_nbf=False)
    with pytest.raises(InvalidEvidence, match="nbf"):
        check_validity_window(without, NOW, 3600, require_nbf=True)


def test_algorithm_comes_from_the_key_never_the_token() -> None:
    assert algorithm_for_key(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()) == "RS256"
    assert algorithm_for_key(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()) is None
    assert algorithm_for_key(rsa.generate_private_key(public_exponent=3, key_size=2048).public_key()) is None
    assert algorithm_for_key(ec.generate_private_key(ec.SECP256R1()).public_key()) == "ES256"
    assert algorithm_for_key(ec.generate_private_key(ec.SECP384R1()).public_key()) is None
    assert algorithm_for_key(b"a shared secret") is None


def test_verify_signature_refuses_a_token_claiming_another_algorithm() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"a": 1}, key, algorithm="ES256")
    jws = parse_compact_jws(token)
    verify_signature(jws, key.public_key(), "ES256")
    with pytest.raises(InvalidEvidence, match="algorithm"):
        verify_signature(jws, key.public_key(), "RS256")


def test_a_structurally_valid_token_exposes_its_parts() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jws = parse_compact_jws(jwt.encode({"iss": "x"}, key, algorithm="ES256", headers={"kid": "k1"}))
    assert (jws.alg, jws.kid, dict(jws.claims)) == ("ES256", "k1", {"iss": "x"})
    assert len(jws.signature) == 64
