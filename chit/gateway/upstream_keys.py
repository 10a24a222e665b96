"""The upstream API keys the gateway injects: from a file, or from AWS Secrets Manager.

A key never leaves this module except into the one header of a forwarded
request (`chit.gateway.forwarding`) and the redactor that keeps it out of
answers (`chit.gateway.redaction`). No message, log line or exception here
ever carries it: errors name the file or the secret, never its content.

- A file (a mounted Kubernetes Secret) is re-read when it changes. The kubelet
  replaces a Secret's files at once by renaming a `..data` symbolic link; the
  file is checked at most every CHECK_SECONDS, by `stat` through the links
  (device, inode, modification time, size), so a rotation is in use within
  about a second. A new content that is not a usable key is logged and the
  key in use stays.
- A secret in AWS Secrets Manager is read with boto3 (`chit.aws`, the
  gateway's own credentials) and cached for `cache_seconds`; then it is read
  again in the background while the cached key keeps serving. If the read
  fails the cached key stays in use (logged); with no key read yet, a request
  cannot be forwarded (503).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path

from chit.aws import AwsClients, AwsRefused, AwsUnavailable
from chit.gateway.config import AwsSecret

log = logging.getLogger("chit.gateway.keys")

# The key sources' clock (tests advance it).
_clock = time.monotonic

CHECK_SECONDS = 1.0
RETRY_SECONDS = 30.0
MAX_KEY_BYTES = 8 * 1024


class KeyUnavailable(Exception):
    """No usable upstream key: the request cannot be forwarded (503). The message names
    the source, never a key."""


def usable_key(raw: bytes, where: str) -> str:
    """The key in `raw`: one line of visible ASCII (what a header value can carry
    unchanged), surrounding whitespace and a final newline removed. KeyUnavailable
    says what is wrong without quoting any of it."""
    if len(raw) > MAX_KEY_BYTES:
        raise KeyUnavailable(f"{where}: more than {MAX_KEY_BYTES} bytes")
    try:
        key = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyUnavailable(f"{where}: not ASCII") from None
    if not key:
        raise KeyUnavailable(f"{where}: empty")
    if not all("\x21" <= c <= "\x7e" for c in key):
        raise KeyUnavailable(f"{where}: a key is one line of visible ASCII characters (no spaces or control characters)")
    return key


class UpstreamKey(ABC):
    @abstractmethod
    async def current(self) -> str:
        """The key to inject now; KeyUnavailable when there is none."""

    @property
    @abstractmethod
    def description(self) -> str:
        """Where the key comes from, for logs and /readyz (never the key)."""


class FileKey(UpstreamKey):
    def __init__(self, path: Path):
        self.path = path
        self._key: str | None = None
        self._version: tuple[int, ...] | None = None
        self._checked = -CHECK_SECONDS
        self._failure: tuple[tuple[int, ...] | None, str] | None = None

    @property
    def description(self) -> str:
        return f"file {self.path}"

    def _reload_if_changed(self) -> None:
        version: tuple[int, ...] | None = None
        try:
            status = os.stat(self.path)  # follows the kubelet's symbolic links
            version = (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size)
            if version == self._version:
                return
            with open(self.path, "rb") as file:
                key = usable_key(file.read(MAX_KEY_BYTES + 1), str(self.path))
        except OSError as error:
            problem = f"{self.path}: cannot read it: {error.strerror}"
        except KeyUnavailable as error:
            problem = str(error)
        else:
            if self._key is not None:
                log.info("upstream key %s changed: the new key is in use", self.path)
            self._key, self._version, self._failure = key, version, None
            return
        if self._failure != (version, problem):  # said once for each state of the file
            self._failure = (version, problem)
            log.error("upstream key %s%s", problem, "; the previous key stays in use" if self._key else "")

    def load(self) -> str:
        """Check the file now (at start: a key file that cannot be used stops the gateway)."""
        self._checked = _clock()
        self._reload_if_changed()
        if self._key is None:
            raise KeyUnavailable(self._failure[1] if self._failure else f"{self.path}: no key")
        return self._key

    async def current(self) -> str:
        if _clock() - self._checked >= CHECK_SECONDS:
            return self.load()
        if self._key is None:
            raise KeyUnavailable(f"{self.path}: no key")
        return self._key


class SecretsManagerKey(UpstreamKey):
    def __init__(self, secret: AwsSecret, aws: AwsClients):
        self.secret = secret
        self.aws = aws
        self._key: str | None = None
        self._read_at = -float("inf")
        self._attempted_at = -float("inf")
        self._reading: asyncio.Task[None] | None = None

    @property
    def _retry_after(self) -> float:
        # After a failed refresh, the next try waits this long: no call to AWS per request.
        return min(RETRY_SECONDS, self.secret.cache_seconds)

    @property
    def description(self) -> str:
        return f"AWS Secrets Manager secret {self.secret.secret_id}"

    async def _read(self) -> None:
        where = self.description
        try:
            answer = await self.aws.call("secretsmanager", self.aws.config.region, "get_secret_value", {"SecretId": self.secret.secret_id})
        except (AwsUnavailable, AwsRefused) as error:
            raise KeyUnavailable(f"{where}: {error}") from None
        value = answer.get("SecretString")
        if not isinstance(value, str):
            raise KeyUnavailable(f"{where}: no SecretString (a binary secret is not supported)")
        if self.secret.json_key is not None:
            try:
                document = json.loads(value)
            except ValueError:
                raise KeyUnavailable(f"{where}: not a JSON object, and json_key is set") from None
            member = document.get(self.secret.json_key) if isinstance(document, dict) else None
            if not isinstance(member, str):
                raise KeyUnavailable(f"{where}: no string member {self.secret.json_key!r}")
            value = member
        self._key = usable_key(value.encode("utf-8", "replace"), where)
        self._read_at = _clock()

    def _start_read(self) -> asyncio.Task[None]:
        if self._reading is None:
            self._attempted_at = _clock()
            self._reading = asyncio.ensure_future(self._read())
            self._reading.add_done_callback(self._read_done)
        return self._reading

    def _read_done(self, task: asyncio.Task[None]) -> None:
        self._reading = None
        error = None if task.cancelled() else task.exception()
        if error is not None and self._key is not None:
            log.error("upstream key %s; the cached key stays in use", error)

    async def current(self) -> str:
        if self._key is None:
            await asyncio.shield(self._start_read())
        elif (now := _clock()) - self._read_at >= self.secret.cache_seconds and now - self._attempted_at >= self._retry_after:
            self._start_read()  # answer with the cached key, refresh in the background
        assert self._key is not None
        return self._key
