"""chit's signing keys: PEM files in `signing.keys_dir`, rotation, and the JWKS.

Each key file is named `signing-<activates_at>-<id>.pem`. A key signs from its
activation time until the next key of its series activates; `chit keys rotate`
writes the next key with an activation `rotation_grace_seconds` in the future,
so that it is published (and cached by resource servers) before anything is
signed with it. A superseded key stays published for 900 s after it last
signed, the longest a chit token lives. Running servers re-scan the directory
every `RESCAN_SECONDS`, so rotation needs no restart.

Series (`KeySeries`): each algorithm of `signing.algorithms` other than the
default `signing.algorithm` keeps keys of its own, rotated and retired apart
(relying parties that accept RS256 only, docs/operators/keys.md "Several
algorithms"). Every other key, whatever its type, is in the default series, so
that changing `signing.algorithm` rotates from one type to the next. The JWKS
publishes every series.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from chit.server.config import MAX_TOKEN_TTL

log = logging.getLogger("chit.keys")

RESCAN_SECONDS = 10.0  # docs/reference: changes are picked up within 30 s
_KEY_FILE = re.compile(r"signing-(\d{1,12})-([A-Za-z0-9]{1,32})\.pem")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class SigningKeyError(Exception):
    """A key file is unusable or no key can sign."""


def generate_private_key(algorithm: str) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported signing algorithm {algorithm!r}")


def algorithm_of(private_key: object) -> str:
    """The JWS algorithm a key signs with, fixed by its type."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(private_key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size >= 2048:
        return "RS256"
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise SigningKeyError("key type not supported (ECDSA P-256, RSA >= 2048 bits or Ed25519)")


def public_jwk(private_key: PrivateKey) -> dict[str, Any]:
    public = private_key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(public, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(public, as_dict=True)
    return OKPAlgorithm.to_jwk(public, as_dict=True)


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3: SHA-256 over the required members, sorted, without whitespace."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in required}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class KeySeries:
    """Which series a key belongs to: `algorithms[0]` is the default series."""

    algorithms: tuple[str, ...] = ("ES256",)

    @property
    def default(self) -> str:
        return self.algorithms[0]

    def of(self, algorithm: str) -> str:
        return algorithm if algorithm in self.algorithms else self.default


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: PrivateKey
    jwk: dict[str, Any]  # public members + kid, alg, use
    activates_at: int
    path: Path


def load_key_file(path: Path, activates_at: int) -> SigningKey:
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise SigningKeyError(f"{path}: not a readable unencrypted PEM private key ({error})") from None
    algorithm = algorithm_of(private_key)
    jwk = public_jwk(private_key)  # type: ignore[arg-type]
    kid = jwk_thumbprint(jwk)
    jwk.update(kid=kid, alg=algorithm, use="sig")
    return SigningKey(kid, algorithm, private_key, jwk, activates_at, path)  # type: ignore[arg-type]


def write_key_file(keys_dir: Path, algorithm: str, activates_at: int) -> Path:
    """Create a new private key file, readable by its owner only."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_key = generate_private_key(algorithm)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = keys_dir / f"signing-{activates_at}-{secrets.token_hex(4)}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
        file.flush()
        os.fsync(file.fileno())
    return path


def _key_files(keys_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in os.scandir(keys_dir):
        match = _KEY_FILE.fullmatch(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


class _DirectoryLock:
    """An advisory lock so that two processes never both create the first key."""

    def __init__(self, keys_dir: Path):
        self.path = keys_dir / ".lock"

    def __enter__(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def has_keys(keys_dir: Path) -> bool:
    return keys_dir.is_dir() and bool(_key_files(keys_dir))


def _load_keys(keys_dir: Path, files: list[tuple[int, Path]] | None = None) -> list[SigningKey]:
    """Every readable key file, in activation order; unreadable ones are logged and skipped."""
    keys = []
    for activation, path in _key_files(keys_dir) if files is None else files:
        try:
            keys.append(load_key_file(path, activation))
        except SigningKeyError as error:
            log.error("%s", error)
        except OSError:  # removed since the scan: `chit keys rotate` retired it
            continue
    return keys


def ensure_signing_key(keys_dir: Path, algorithm: str, series: KeySeries | None = None) -> None:
    """Create the first key of `algorithm`'s series (active at once) if the directory holds none.

    A directory that already holds a key of every configured series is only
    read: in a cluster it is typically a read-only Secret mount."""
    series = series or KeySeries((algorithm,))
    wanted = series.of(algorithm)

    def missing() -> bool:
        return not any(series.of(k.algorithm) == wanted for k in _load_keys(keys_dir))

    if keys_dir.is_dir() and not missing():
        return
    try:
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _DirectoryLock(keys_dir):
            if missing():
                path = write_key_file(keys_dir, algorithm, int(time.time()))
                log.info("created signing key %s (%s)", path, algorithm)
    except OSError as error:
        raise SigningKeyError(
            f"{keys_dir}: no {algorithm} signing key, and none can be created there ({error.strerror}); "
            f"add one with `chit keys rotate --algorithm {algorithm}`"
        ) from None


def ensure_signing_keys(keys_dir: Path, series: KeySeries) -> None:
    """The first key of every configured series (`signing.algorithms`)."""
    for algorithm in series.algorithms:
        ensure_signing_key(keys_dir, algorithm, series)


def rotate(keys_dir: Path, algorithm: str, grace_seconds: int, now: float | None = None, series: KeySeries | None = None) -> SigningKey:
    """Add the next key of `algorithm`'s series; it signs once `grace_seconds` have passed
    (at once if the directory holds no key at all: nothing can have cached it). Also
    removes key files that are no longer published."""
    now = time.time() if now is None else now
    series = series or KeySeries((algorithm,))
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _DirectoryLock(keys_dir):
        existing = _load_keys(keys_dir)
        activates_at = int(now) + grace_seconds if existing else int(now)
        same = [k.activates_at for k in existing if series.of(k.algorithm) == series.of(algorithm)]
        if same and activates_at <= max(same):
            activates_at = max(same) + 1  # a second rotation never jumps the queue
        path = write_key_file(keys_dir, algorithm, activates_at)
        added = load_key_file(path, activates_at)
        for old in _retired(existing + [added], now, series):
            old.path.unlink(missing_ok=True)
            log.info("removed retired signing key %s", old.path)
    return added


def _retired(keys: list[SigningKey], now: float, series: KeySeries) -> list[SigningKey]:
    """Keys superseded in their series for longer than a token can live."""
    retired = []
    for name in dict.fromkeys(series.of(k.algorithm) for k in keys):
        members = sorted((k for k in keys if series.of(k.algorithm) == name), key=lambda k: (k.activates_at, str(k.path)))
        active = [i for i, key in enumerate(members) if key.activates_at <= now]
        if not active:
            continue
        for i in range(active[-1]):
            if members[i + 1].activates_at + MAX_TOKEN_TTL <= now:
                retired.append(members[i])
    return retired


class KeyStore:
    """The keys of `keys_dir` as seen by a running server."""

    def __init__(self, keys_dir: Path, series: KeySeries | None = None):
        self.keys_dir = keys_dir
        self.series = series or KeySeries()
        self._keys: list[SigningKey] = []
        self._listing: list[tuple[int, str, int]] = []
        self._scanned = -RESCAN_SECONDS
        self._jwks_cache: tuple[tuple[str, ...], bytes] | None = None
        self.reload(force=True)

    def reload(self, force: bool = False) -> None:
        monotonic = time.monotonic()
        if not force and monotonic - self._scanned < RESCAN_SECONDS:
            return
        self._scanned = monotonic
        try:
            files = _key_files(self.keys_dir)
            listing = [(activation, str(path), path.stat().st_mtime_ns) for activation, path in files]
        except OSError as error:
            if force:
                raise SigningKeyError(f"{self.keys_dir}: {error.strerror}") from None
            log.error("cannot scan %s: %s; keeping the loaded keys", self.keys_dir, error.strerror)
            return
        if listing == self._listing:
            return
        keys = []
        for key in _load_keys(self.keys_dir, files):
            try:
                mode = key.path.stat().st_mode
            except OSError:  # removed since the scan: `chit keys rotate` retired it
                continue
            keys.append(key)
            if mode & 0o077:
                log.warning("signing key %s is readable by group or others", key.path)
        self._keys = keys
        self._listing = listing
        log.info("signing keys loaded: %s", ", ".join(k.kid for k in keys) or "none")

    def signing_key(self, now: float, algorithm: str | None = None) -> SigningKey | None:
        """The newest key of `algorithm`'s series (default: the default series) whose activation has come."""
        self.reload()
        wanted = self.series.of(algorithm or self.series.default)
        active = None
        for key in self._keys:
            if key.activates_at <= now and self.series.of(key.algorithm) == wanted:
                active = key
        return active

    def published(self, now: float) -> list[SigningKey]:
        """Upcoming keys, the active keys, and predecessors whose tokens may still be alive."""
        self.reload()
        retired = {k.path for k in _retired(self._keys, now, self.series)}
        return [k for k in self._keys if k.path not in retired]

    def jwks_json(self, now: float) -> bytes:
        keys = self.published(now)
        kids = tuple(k.kid for k in keys)
        if self._jwks_cache is None or self._jwks_cache[0] != kids:
            body = json.dumps({"keys": [k.jwk for k in keys]}, separators=(",", ":")).encode()
            self._jwks_cache = (kids, body)
        return self._jwks_cache[1]

    @property
    def keys(self) -> list[SigningKey]:
        return list(self._keys)

    def is_own_kid(self, kid: str | None) -> bool:
        return kid is not None and any(k.kid == kid for k in self._keys)


def describe(keys_dir: Path, now: float | None = None, series: KeySeries | None = None) -> list[dict[str, Any]]:
    """For `chit keys list`: every key file and its state."""
    now = time.time() if now is None else now
    store = KeyStore(keys_dir, series)
    active = [store.signing_key(now, algorithm) for algorithm in store.series.algorithms]
    published = {k.kid for k in store.published(now)}
    rows = []
    for key in store.keys:
        state = "signing" if any(key is a for a in active) else ("upcoming" if key.activates_at > now else "published")
        if key.kid not in published:
            state = "retired"
        rows.append({"kid": key.kid, "algorithm": key.algorithm, "activates_at": key.activates_at, "state": state, "file": str(key.path)})
    return rows

