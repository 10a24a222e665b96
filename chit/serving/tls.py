"""chit's own HTTPS: the certificate and key from files, followed as they are replaced.

cert-manager renews a certificate by rewriting its Secret, and the kubelet
swaps the mounted files (atomically, through a symbolic link) a minute or so
later. Every worker process checks the two files every `RELOAD_SECONDS` and,
once they changed, serves new handshakes with them; connections already open
keep the certificate they started with. A pair that does not load (half
written, a key that does not match) is logged and tried again at the next
check, and the certificate in service stays.

A new pair is loaded into a new SSLContext, never into the one in service: a
failed `load_cert_chain` leaves a context with the new certificate and without
any private key, which fails every handshake. The listening socket keeps its
first context; its SNI callback, which OpenSSL calls for every ClientHello
(with or without a server name), hands each new connection the current one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from pathlib import Path

import uvicorn
from cryptography import x509

from chit.serving.listen import ListenTls

log = logging.getLogger("chit.tls")

RELOAD_SECONDS = 5.0
CERT_KEY = "listen.tls.cert_file"
KEY_KEY = "listen.tls.key_file"


class CertificateError(Exception):
    """The certificate or key cannot be served; the message names the config key and the file."""


def _version(files: ListenTls) -> tuple[int, ...]:
    """What changes when either file is replaced: stat follows the kubelet's symbolic links."""
    version: tuple[int, ...] = ()
    for key, path in ((CERT_KEY, files.cert_file), (KEY_KEY, files.key_file)):
        try:
            status = os.stat(path)
        except OSError as error:
            raise CertificateError(f"{key} {path}: cannot read it: {error.strerror}") from None
        version += (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size)
    return version


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CertificateError(f"{key} {path}: cannot read it: {error.strerror}") from None


def load_context(files: ListenTls) -> tuple[ssl.SSLContext, x509.Certificate]:
    """A server context with this pair: TLS 1.2 or 1.3, Python's server defaults for
    ciphers and options, no client certificate asked for. Returns the leaf certificate too."""
    certificate_pem = _read(CERT_KEY, files.cert_file)
    _read(KEY_KEY, files.key_file)
    try:
        leaf = x509.load_pem_x509_certificates(certificate_pem)[0]
    except ValueError:
        raise CertificateError(f"{CERT_KEY} {files.cert_file}: no PEM certificate in it") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise CertificateError(f"{KEY_KEY} {files.key_file} is not the key of the certificate in {CERT_KEY} {files.cert_file}") from None
        raise CertificateError(
            f"{KEY_KEY} {files.key_file}: not a PEM private key for the certificate in {CERT_KEY} {files.cert_file} "
            "(an encrypted key is not supported)"
        ) from None
    except OSError as error:  # replaced between the reads above and this one
        raise CertificateError(f"{CERT_KEY} {files.cert_file}, {KEY_KEY} {files.key_file}: cannot read them: {error.strerror}") from None
    return context, leaf


def describe(leaf: x509.Certificate) -> str:
    until = leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{leaf.subject.rfc4514_string()}, serial {leaf.serial_number:x}, valid until {until}"


class ReloadingCertificate:
    """The SSLContext a listening socket serves, following the certificate files."""

    def __init__(self, files: ListenTls):
        self.files = files
        self._version = _version(files)
        self._current, self._leaf = load_context(files)
        self._failure: tuple[tuple[int, ...] | None, str] | None = None
        self.context = self._current
        self.context.sni_callback = self._select

    def _select(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        if self._current is not context:
            connection.context = self._current

    def reload_if_changed(self) -> None:
        version: tuple[int, ...] | None = None
        try:
            version = _version(self.files)
            if version == self._version:
                return
            context, leaf = load_context(self.files)
        except CertificateError as error:
            # Tried again at every check; said once for each state of the files.
            if self._failure != (version, str(error)):
                self._failure = (version, str(error))
                log.error("process %d keeps serving %s: the new certificate does not load: %s", os.getpid(), describe(self._leaf), error)
            return
        self._current, self._leaf, self._version, self._failure = context, leaf, version, None
        log.info("process %d now serves %s", os.getpid(), describe(leaf))

    async def watch(self) -> None:
        log.info("process %d serves %s; %s and %s are checked every %.0f s", os.getpid(), describe(self._leaf),
                 self.files.cert_file, self.files.key_file, RELOAD_SECONDS)
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            self.reload_if_changed()


class HttpsServer(uvicorn.Server):
    """A uvicorn server whose TLS certificate follows its files."""

    def __init__(self, config: uvicorn.Config, certificate: ReloadingCertificate):
        super().__init__(config)
        # uvicorn builds its own context from ssl_certfile at load(); load first, then replace it.
        config.load()
        config.ssl = certificate.context
        self.certificate = certificate

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        # In the server's event loop, the thread that runs the handshakes: no lock is needed.
        watcher = asyncio.create_task(self.certificate.watch())
        try:
            await super().serve(sockets)
        finally:
            watcher.cancel()
