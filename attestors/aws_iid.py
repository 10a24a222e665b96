"""AWS: EC2 instance identity documents (IID), verified against AWS's regional certificates.

Server side (`AwsIidVerifier`): the subject token (DESIGN.md "POST /token —
request") carries the document exactly as IMDS served it, its signature in one
of two forms, and the client's nonce:

- `signature`: RSA PKCS#1 v1.5 / SHA-256 over the exact document bytes,
  checked with the `signature/REGION.pem` certificate of the region the
  document names;
- `rsa2048`: PKCS#7 SignedData (SHA-256) checked with `rsa2048/REGION.pem`
  (attestors.aws_pkcs7);
- `pkcs7` (DSA / SHA-1) is refused.

Only the certificate of the document's own region is ever tried, and it must be
valid now. An IID never expires and anything on the instance can read it, so
each instance is bound on first use to a hash of the client's nonce (DESIGN.md
"AWS nonce"): `InstanceBindings`. With `verify_instance`, DescribeInstances
confirms the instance is pending or running and adds its tags, VPC, subnet,
instance profile and image to the facts (`AwsIidVerifier.enrich`).

Client side (`AwsIidCollector`): IMDSv2 — a session token from
`PUT /latest/api/token`, then the document and its signature with that token —
plus the instance nonce, created once in a file only its owner can read and
reused for every exchange (`instance_nonce`); `encode_subject_token` packs them.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from attestors import (
    TOKEN_TYPE_AWS_IID,
    Attestation,
    CollectionFailed,
    Collector,
    DocumentVerifier,
    EvidenceUnavailable,
    InvalidEvidence,
    PlatformAbsent,
    SubjectToken,
    metadata_client,
    printable,
)
from attestors.aws_pkcs7 import verify_signed_data
from attestors.jose import strict_json_object
from server.config import AWS_ACCOUNT_ID, AWS_REGION, AwsIidAttestor
from server.state import StateStore, StateUnavailable

if TYPE_CHECKING:
    from server.aws import AwsClients

log = logging.getLogger("chit.attestors.aws_iid")

KIND = "aws_iid"
SHIPPED_CERTIFICATES = Path(__file__).resolve().parent / "aws_certificates"
SIGNATURE_FORMS = ("signature", "rsa2048")
Form = Literal["signature", "rsa2048"]

MAX_SUBJECT_TOKEN_LENGTH = 16 * 1024
MAX_DOCUMENT_LENGTH = 8 * 1024
# DESIGN.md "AWS nonce": 16–128 printable ASCII characters, no space.
NONCE = re.compile(r"[!-~]{16,128}")
INSTANCE_ID = re.compile(r"i-[0-9a-f]{8}(?:[0-9a-f]{9})?")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_WHITESPACE = re.compile(rb"\s+")
# The availability zone is the region plus a letter, or plus a Local Zone / Wavelength suffix.
_ZONE_SUFFIX = re.compile(r"(?:-[a-z0-9]+)*[a-z]")
_PENDING_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_RUNNING_STATES = frozenset({"pending", "running"})


# --- the subject token ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IidEvidence:
    """A decoded subject token; nothing in it is verified yet."""

    document: bytes
    form: Form
    signature: bytes
    nonce: str


def _standard_base64(text: str, what: str) -> bytes:
    """The signature as IMDS serves it: standard base64, line breaks ignored."""
    compact = _WHITESPACE.sub(b"", text.encode("ascii", errors="replace"))
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEvidence(f"{what} is not base64") from None


def parse_subject_token(subject_token: str) -> IidEvidence:
    """base64url(JSON {document, signature | rsa2048, nonce}), with or without padding."""
    if len(subject_token) > MAX_SUBJECT_TOKEN_LENGTH:
        raise InvalidEvidence(f"subject token longer than {MAX_SUBJECT_TOKEN_LENGTH} characters")
    stripped = subject_token.rstrip("=")
    padding_length = len(subject_token) - len(stripped)
    if (
        not _BASE64URL.fullmatch(stripped)
        or len(stripped) % 4 == 1
        or padding_length > 2
        or (padding_length and len(subject_token) % 4)
    ):
        raise InvalidEvidence("subject token is not base64url")
    try:
        raw = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise InvalidEvidence("subject token is not base64url") from None
    body = strict_json_object(raw, "subject token")
    if "pkcs7" in body:
        raise InvalidEvidence("the DSA/SHA-1 pkcs7 signature is not accepted; send signature or rsa2048")
    unknown = set(body) - {"document", "nonce", *SIGNATURE_FORMS}
    if unknown:
        raise InvalidEvidence(f"subject token has unknown members: {', '.join(sorted(unknown))}")
    forms = [form for form in SIGNATURE_FORMS if form in body]
    if len(forms) != 1:
        raise InvalidEvidence("subject token needs exactly one of signature, rsa2048")
    form: Form = forms[0]  # type: ignore[assignment]
    document, signature, nonce = body.get("document"), body[form], body.get("nonce")
    if not isinstance(document, str) or not document:
        raise InvalidEvidence("document missing")
    if len(document) > MAX_DOCUMENT_LENGTH:
        raise InvalidEvidence("document too large")
    if not isinstance(signature, str) or not signature:
        raise InvalidEvidence(f"{form} missing")
    if nonce is None:
        raise InvalidEvidence("nonce missing: every exchange of an instance identity document needs its nonce")
    if not isinstance(nonce, str) or not NONCE.fullmatch(nonce):
        raise InvalidEvidence("nonce must be 16-128 printable ASCII characters without spaces")
    try:
        document_bytes = document.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in the token's JSON
        raise InvalidEvidence("document is not valid UTF-8") from None
    return IidEvidence(document_bytes, form, _standard_base64(signature, form), nonce)


def encode_subject_token(document: str, nonce: str, *, signature: str | None = None, rsa2048: str | None = None) -> str:
    """The subject token a collector sends: the IMDS bodies untouched, plus the nonce."""
    body: dict[str, str] = {"document": document, "nonce": nonce}
    if signature is not None:
        body["signature"] = signature
    if rsa2048 is not None:
        body["rsa2048"] = rsa2048
    return base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()


# --- the document -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    """The fields of a document chit relies on (every field stays in `claims`)."""

    account_id: str
    region: str
    availability_zone: str
    instance_id: str
    image_id: str
    instance_type: str
    pending_time: int
    claims: Mapping[str, Any]


def _field(claims: Mapping[str, Any], name: str, pattern: re.Pattern[str] | None = None) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidEvidence(f"document {name} missing or malformed")
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidEvidence(f"document {name} malformed")
    return value


def parse_document(document: bytes) -> InstanceIdentity:
    """The document's JSON (duplicate members refused) and the fields that name the instance."""
    claims = strict_json_object(document, "document")
    region = _field(claims, "region", AWS_REGION)
    zone = _field(claims, "availabilityZone")
    if not (zone.startswith(region) and _ZONE_SUFFIX.fullmatch(zone[len(region) :])):
        raise InvalidEvidence("document availabilityZone is not in its region")
    pending = _field(claims, "pendingTime", _PENDING_TIME)
    try:
        pending_time = calendar.timegm(time.strptime(pending, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise InvalidEvidence("document pendingTime malformed") from None
    return InstanceIdentity(
        account_id=_field(claims, "accountId", AWS_ACCOUNT_ID),
        region=region,
        availability_zone=zone,
        instance_id=_field(claims, "instanceId", INSTANCE_ID),
        image_id=_field(claims, "imageId"),
        instance_type=_field(claims, "instanceType"),
        pending_time=pending_time,
        claims=claims,
    )


# --- AWS's certificates ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegionCertificate:
    region: str
    certificate: x509.Certificate
    key: rsa.RSAPublicKey

    def valid_at(self, now: float) -> bool:
        return self.certificate.not_valid_before_utc.timestamp() <= now <= self.certificate.not_valid_after_utc.timestamp()


def load_certificates(directory: Path, min_bits: int) -> dict[str, RegionCertificate]:
    """REGION.pem files: the set of known regions is the set of files."""
    certificates: dict[str, RegionCertificate] = {}
    if not directory.is_dir():
        return certificates
    for path in sorted(directory.glob("*.pem")):
        region = path.stem
        if not AWS_REGION.fullmatch(region):
            raise ValueError(f"{path}: the file name must be an AWS region name (REGION.pem)")
        try:
            certificate = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError:
            raise ValueError(f"{path}: not a PEM certificate") from None
        key = certificate.public_key()
        # AWS still signs some regions' documents with RSA-1024 keys (DESIGN.md "AWS nonce"):
        # they are trusted as AWS publishes them, but nothing weaker.
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < min_bits:
            raise ValueError(f"{path}: an RSA key of at least {min_bits} bits is required")
        certificates[region] = RegionCertificate(region, certificate, key)
    return certificates


class RegionCertificates:
    """`signature/REGION.pem` and `rsa2048/REGION.pem` under one directory."""

    def __init__(self, directory: Path, now: float | None = None):
        self.directory = directory
        self.by_form: dict[str, dict[str, RegionCertificate]] = {
            "signature": load_certificates(directory / "signature", 1024),
            "rsa2048": load_certificates(directory / "rsa2048", 2048),
        }
        if not any(self.by_form.values()):
            raise ValueError(f"{directory}: no certificates (expected signature/REGION.pem or rsa2048/REGION.pem)")
        now = time.time() if now is None else now
        for form, certificates in self.by_form.items():
            for certificate in certificates.values():
                if not certificate.valid_at(now):
                    log.warning("the %s certificate of %s in %s is not valid now", form, certificate.region, directory)

    @property
    def regions(self) -> frozenset[str]:
        return frozenset(region for certificates in self.by_form.values() for region in certificates)

    def key(self, form: Form, region: str, now: float) -> rsa.RSAPublicKey:
        """The one certificate that may verify a document of `region` in `form`."""
        certificate = self.by_form[form].get(region)
        if certificate is None:
            raise InvalidEvidence(f"no {form} certificate for region {region}")
        if not certificate.valid_at(now):
            raise InvalidEvidence(f"the {form} certificate of region {region} is not valid now")
        return certificate.key


def verify_document_signature(evidence: IidEvidence, key: rsa.RSAPublicKey) -> None:
    if evidence.form == "rsa2048":
        verify_signed_data(evidence.signature, evidence.document, key)
        return
    try:
        key.verify(evidence.signature, evidence.document, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise InvalidEvidence("signature does not verify") from None


# --- replay binding ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BindingRecord:
    """What the state store keeps per instance: a hash of the nonce, never the nonce."""

    nonce_hash: str
    pending_time: int

    @classmethod
    def of(cls, instance_id: str, nonce: str, pending_time: int) -> BindingRecord:
        digest = hashlib.sha256(f"chit aws-iid nonce\0{instance_id}\0{nonce}".encode()).hexdigest()
        return cls(digest, pending_time)

    @classmethod
    def parse(cls, value: str) -> BindingRecord:
        nonce_hash, _, pending = value.partition(" ")
        if not pending.isdigit():
            raise EvidenceUnavailable("the stored instance binding is unreadable")
        return cls(nonce_hash, int(pending))

    def dump(self) -> str:
        return f"{self.nonce_hash} {self.pending_time}"

    def admits(self, presented: BindingRecord) -> None:
        """DESIGN.md "AWS nonce": the same nonce, and a pendingTime no older than the bound one."""
        if not hmac.compare_digest(self.nonce_hash, presented.nonce_hash):
            raise InvalidEvidence("this instance is bound to another nonce")
        if presented.pending_time < self.pending_time:
            raise InvalidEvidence("document pendingTime is older than the one this instance is bound to")


class InstanceBindings:
    """Nonce bindings in the state store, one key per instance ("iid:INSTANCE_ID")."""

    PREFIX = "iid:"

    def __init__(self, state: StateStore, ttl: float):
        self.state = state
        self.ttl = ttl

    async def _current(self, key: str) -> str | None:
        try:
            return await self.state.get(key)
        except StateUnavailable as error:
            raise EvidenceUnavailable(f"state store: {error}") from None

    async def check(self, instance_id: str, nonce: str, pending_time: int) -> NonceBinding:
        """Refuse now what the binding refuses; the returned guard records the use later."""
        key = self.PREFIX + instance_id
        presented = BindingRecord.of(instance_id, nonce, pending_time)
        current = await self._current(key)
        if current is not None:
            BindingRecord.parse(current).admits(presented)
        return NonceBinding(self, key, current, presented)

    async def commit(self, key: str, expected: str | None, presented: BindingRecord) -> None:
        """Bind (add) or refresh (compare-and-set) the record; a concurrent change is re-checked."""
        value = presented.dump()
        try:
            for _ in range(3):
                if expected is None:
                    if await self.state.add(key, value, self.ttl):
                        return
                elif await self.state.replace(key, expected, value, self.ttl):
                    return
                expected = await self.state.get(key)
                if expected is not None:
                    # Another exchange bound or refreshed it meanwhile: the same rules apply.
                    BindingRecord.parse(expected).admits(presented)
        except StateUnavailable as error:
            raise EvidenceUnavailable(f"state store: {error}") from None
        raise EvidenceUnavailable("the instance binding changed concurrently too often")

    async def forget(self, instance_id: str) -> bool:
        """`chit aws forget-instance`: the next exchange binds a new nonce."""
        return await self.state.delete(self.PREFIX + instance_id)


@dataclass(slots=True)
class NonceBinding:
    """The Attestation's replay guard: committed only once a credential is issued."""

    bindings: InstanceBindings
    key: str
    expected: str | None
    presented: BindingRecord

    async def commit(self) -> None:
        await self.bindings.commit(self.key, self.expected, self.presented)


# --- the verifier -----------------------------------------------------------------------------


class AwsIidVerifier(DocumentVerifier):
    kind = KIND
    token_type = TOKEN_TYPE_AWS_IID

    def __init__(self, config: AwsIidAttestor, trust_domain: str, state: StateStore, aws: AwsClients | None = None):
        """`aws` is needed only with `verify_instance`."""
        self.config = config
        self.trust_domain = trust_domain
        self.certificates = RegionCertificates(config.certificates_dir or SHIPPED_CERTIFICATES)
        self.regions = None if config.regions is None else frozenset(config.regions)
        self.account_ids = None if config.account_ids is None else frozenset(config.account_ids)
        self.bindings = InstanceBindings(state, config.binding_ttl_seconds)
        if config.verify_instance and aws is None:
            raise ValueError("attestors.aws_iid.verify_instance needs AWS API access")
        self.aws = aws

    async def verify(self, subject_token: str, now: float) -> Attestation:
        evidence = parse_subject_token(subject_token)
        identity = parse_document(evidence.document)
        verify_document_signature(evidence, self.certificates.key(evidence.form, identity.region, now))
        # DESIGN.md "Allowlists": refused as invalid evidence (400, audit `invalid`).
        if self.regions is not None and identity.region not in self.regions:
            raise InvalidEvidence(f"region {identity.region} is not allowed")
        if self.account_ids is not None and identity.account_id not in self.account_ids:
            raise InvalidEvidence(f"account {identity.account_id} is not allowed")
        guard = await self.bindings.check(identity.instance_id, evidence.nonce, identity.pending_time)
        return Attestation(
            kind=KIND,
            subject=f"spiffe://{self.trust_domain}/aws/{identity.account_id}/{identity.region}/{identity.instance_id}",
            facts={
                "account_id": identity.account_id,
                "region": identity.region,
                "availability_zone": identity.availability_zone,
                "instance_id": identity.instance_id,
                "image_id": identity.image_id,
                "instance_type": identity.instance_type,
            },
            claims=identity.claims,
            att={"account_id": identity.account_id, "region": identity.region, "instance_id": identity.instance_id},
            replay_guard=guard,
        )

    async def enrich(self, attestation: Attestation) -> Attestation:
        """`verify_instance`: DescribeInstances must show this instance pending or running."""
        if not self.config.verify_instance:
            return attestation
        from server.aws import AwsRefused, AwsUnavailable

        assert self.aws is not None
        facts = attestation.facts
        account, region, instance_id = facts["account_id"], facts["region"], facts["instance_id"]
        try:
            answer = await self.aws.call(
                "ec2",
                region,
                "describe_instances",
                {"InstanceIds": [instance_id]},
                role_arn=self.config.describe_roles.get(account),
            )
        except AwsRefused as error:
            if error.code == "InvalidInstanceID.NotFound":
                raise InvalidEvidence("the instance does not exist") from None
            raise EvidenceUnavailable(f"ec2 DescribeInstances: {error.code}") from None
        except AwsUnavailable as error:
            raise EvidenceUnavailable(str(error)) from None
        return dataclasses.replace(attestation, facts={**facts, **instance_facts(answer, attestation)})


def instance_facts(answer: Mapping[str, Any], attestation: Attestation) -> dict[str, Any]:
    """The facts DescribeInstances adds, once it agrees with the document."""
    facts = attestation.facts
    matches = [
        (reservation, instance)
        for reservation in answer.get("Reservations", [])
        for instance in reservation.get("Instances", [])
        if instance.get("InstanceId") == facts["instance_id"]
    ]
    if len(matches) != 1:
        raise InvalidEvidence("the instance does not exist")
    reservation, instance = matches[0]
    state = instance.get("State", {}).get("Name")
    if state not in _RUNNING_STATES:
        raise InvalidEvidence(f"the instance is {state}, not pending or running")
    if reservation.get("OwnerId") != facts["account_id"]:
        raise InvalidEvidence("the instance belongs to another account")
    if instance.get("Placement", {}).get("AvailabilityZone") != facts["availability_zone"]:
        raise InvalidEvidence("the instance is in another availability zone")
    if instance.get("ImageId") != facts["image_id"]:
        raise InvalidEvidence("the instance runs another image")
    extra: dict[str, Any] = {
        "state": state,
        "tags": {t["Key"]: t["Value"] for t in instance.get("Tags", []) if isinstance(t.get("Value"), str)},
    }
    for fact, value in (
        ("vpc_id", instance.get("VpcId")),
        ("subnet_id", instance.get("SubnetId")),
        ("instance_profile_arn", instance.get("IamInstanceProfile", {}).get("Arn")),
    ):
        if isinstance(value, str):
            extra[fact] = value
    return extra


# --- the collector (client side) ---------------------------------------------------------

IMDS_URL = "http://169.254.169.254"
IMDS_TOKEN_PATH = "/latest/api/token"
IDENTITY_PATH = "/latest/dynamic/instance-identity/"
IMDS_SESSION_SECONDS = 60  # one collection needs the session for two requests
DEFAULT_NONCE_FILE = Path("/var/lib/chit/aws-iid-nonce")
MAX_IMDS_BODY = 16 * 1024


def instance_nonce(path: Path) -> str:
    """This instance's nonce (DESIGN.md "AWS nonce"): read from `path`, or created there
    once — random, mode 0600 — and never changed afterwards, because chit binds the
    instance to it on the first exchange. Losing it locks the instance out until an
    operator runs `chit aws forget-instance`."""
    try:
        return _read_nonce(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Written in full under a temporary name, then linked into place: a concurrent
        # collector either finds no file or the complete one, and exactly one nonce wins.
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "w", encoding="ascii") as file:
                file.write(secrets.token_urlsafe(32) + "\n")
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another collector created it first: its nonce is the instance's
        finally:
            os.unlink(temporary)
    except OSError as error:
        raise CollectionFailed(f"cannot create the nonce file {path}: {error.strerror}") from None
    return _read_nonce(path)


def _read_nonce(path: Path) -> str:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # FileNotFoundError: the caller creates it
    except FileNotFoundError:
        raise
    except OSError as error:  # ELOOP: a symbolic link
        raise CollectionFailed(f"cannot read the nonce file {path}: {error.strerror}") from None
    try:
        status = os.fstat(descriptor)
        # Anyone who reads the nonce can exchange this instance's document (which every
        # process on the instance can read) for its credentials.
        if not stat.S_ISREG(status.st_mode) or status.st_uid != os.geteuid() or status.st_mode & 0o077:
            raise CollectionFailed(f"the nonce file {path} must be a regular file of this user's with mode 0600")
        nonce = os.read(descriptor, 256).decode("ascii", errors="replace").strip()
    finally:
        os.close(descriptor)
    if not NONCE.fullmatch(nonce):
        raise CollectionFailed(f"the nonce file {path} does not hold a nonce (16-128 printable ASCII characters, no spaces)")
    return nonce


class AwsIidCollector(Collector):
    """The instance identity document and its signature over IMDSv2, with the nonce."""

    kind = KIND

    def __init__(self, nonce_file: Path = DEFAULT_NONCE_FILE, imds_url: str = IMDS_URL, form: Form = "signature"):
        self.nonce_file = nonce_file
        self.imds_url = imds_url.rstrip("/")
        self.form = form

    def collect(self) -> SubjectToken:
        with metadata_client() as client:
            try:
                session = self._session(client)
                document = self._get(client, session, "document")
                signature = self._get(client, session, self.form)
            except httpx.TransportError as error:
                raise CollectionFailed(f"the EC2 instance metadata service stopped answering ({type(error).__name__})") from None
        # The nonce file is made only once the instance is known to be one.
        nonce = instance_nonce(self.nonce_file)
        return SubjectToken(encode_subject_token(document, nonce, **{self.form: signature}), TOKEN_TYPE_AWS_IID)

    def _session(self, client: httpx.Client) -> str:
        try:
            response = client.put(
                self.imds_url + IMDS_TOKEN_PATH,
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_SESSION_SECONDS)},
            )
        except httpx.TransportError as error:
            raise PlatformAbsent(
                f"no EC2 instance metadata service at {self.imds_url} ({type(error).__name__}; "
                "from a container, IMDSv2 answers only with a hop limit of 2 or more)"
            ) from None
        if response.status_code != 200 or not response.text:
            raise CollectionFailed(f"IMDSv2 refused a session token: HTTP {response.status_code} {printable(response.text)}")
        return response.text

    def _get(self, client: httpx.Client, session: str, name: str) -> str:
        response = client.get(self.imds_url + IDENTITY_PATH + name, headers={"X-aws-ec2-metadata-token": session})
        if response.status_code != 200:
            raise CollectionFailed(f"IMDS refused {IDENTITY_PATH}{name}: HTTP {response.status_code}")
        if len(response.content) > MAX_IMDS_BODY:
            raise CollectionFailed(f"IMDS answered {IDENTITY_PATH}{name} with more than {MAX_IMDS_BODY} bytes")
        try:
            # The exact bytes IMDS served: the signature covers them.
            return response.content.decode("utf-8")
        except UnicodeDecodeError:
            raise CollectionFailed(f"IMDS answered {IDENTITY_PATH}{name} with text that is not UTF-8") from None
