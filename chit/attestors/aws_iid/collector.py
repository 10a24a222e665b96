"""The AWS collector (agent side): IMDSv2 — a session token from `PUT /latest/api/token`,
then the document and its signature with that token — plus the instance nonce,
created once in a file only its owner can read and reused for every exchange.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

from chit.attestors.aws_iid import KIND
from chit.attestors.aws_iid.envelope import NONCE, Form, encode_subject_token
from chit.attestors.base import CollectionFailed, Collector, PlatformAbsent, SubjectToken, metadata_request, printable
from chit.httpclient import TransportError
from chit.protocol import TOKEN_TYPE_AWS_IID


IMDS_URL = "http://169.254.169.254"
IMDS_TOKEN_PATH = "/latest/api/token"
IDENTITY_PATH = "/latest/dynamic/instance-identity/"
IMDS_SESSION_SECONDS = 60  # one collection needs the session for two requests
DEFAULT_NONCE_FILE = Path("/var/lib/chit/aws-iid-nonce")
MAX_IMDS_BODY = 16 * 1024


def instance_nonce(path: Path) -> str:
    """This instance's nonce (docs/operators/aws.md "AWS nonce"): read from `path`, or created there
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
        session = self._session()
        try:
            document = self._get(session, "document")
            signature = self._get(session, self.form)
        except TransportError as error:
            raise CollectionFailed(f"the EC2 instance metadata service stopped answering ({error})") from None
        # The nonce file is made only once the instance is known to be one.
        nonce = instance_nonce(self.nonce_file)
        return SubjectToken(encode_subject_token(document, nonce, **{self.form: signature}), TOKEN_TYPE_AWS_IID)

    def _session(self) -> str:
        try:
            response = metadata_request(
                "PUT", self.imds_url + IMDS_TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_SESSION_SECONDS)}
            )
        except (TransportError, ValueError) as error:
            raise PlatformAbsent(
                f"no EC2 instance metadata service at {self.imds_url} ({error}; "
                "from a container, IMDSv2 answers only with a hop limit of 2 or more)"
            ) from None
        if response.status != 200 or not response.body:
            raise CollectionFailed(f"IMDSv2 refused a session token: HTTP {response.status} {printable(response.text)}")
        return response.text

    def _get(self, session: str, name: str) -> str:
        try:
            response = metadata_request("GET", self.imds_url + IDENTITY_PATH + name, {"X-aws-ec2-metadata-token": session})
        except ValueError:
            raise CollectionFailed(f"IMDS answered {IDENTITY_PATH}{name} with more than {MAX_IMDS_BODY} bytes") from None
        if response.status != 200:
            raise CollectionFailed(f"IMDS refused {IDENTITY_PATH}{name}: HTTP {response.status}")
        if len(response.body) > MAX_IMDS_BODY:
            raise CollectionFailed(f"IMDS answered {IDENTITY_PATH}{name} with more than {MAX_IMDS_BODY} bytes")
        try:
            # The exact bytes IMDS served: the signature covers them.
            return response.body.decode("utf-8")
        except UnicodeDecodeError:
            raise CollectionFailed(f"IMDS answered {IDENTITY_PATH}{name} with text that is not UTF-8") from None
