"""Where a chit process listens: the `listen` section of the token server's and of the
gateway's configuration (docs/reference/configuration.md "listen")."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from chit.section import FilePath, Section
from chit.urls import is_loopback_host


class ListenTls(Section):
    """chit's own HTTPS certificate: PEM files, re-read when they change (chit/serving/tls.py)."""

    cert_file: FilePath  # the certificate, then any intermediates
    key_file: FilePath  # its private key, unencrypted


class Listen(Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8400
    tls: ListenTls | None = None
    # Plain HTTP on an address other than loopback: subject tokens and issued
    # tokens then cross the network in clear, so `chit serve` wants it said.
    plain_http: bool = False

    @model_validator(mode="after")
    def _one_transport(self) -> Listen:
        if self.tls is not None and self.plain_http:
            raise ValueError("set either tls (HTTPS) or plain_http: true, not both")
        return self

    def clear_text_refusal(self) -> str | None:
        """Why `chit serve` must not listen like this, if it must not: tokens in clear
        beyond this machine, without the operator having said so."""
        if self.tls is not None or self.plain_http or is_loopback_host(self.host):
            return None
        return (
            f"listen.host {self.host} is not a loopback address and listen.tls is not set: subject tokens and "
            "issued tokens would cross the network in clear. Set listen.tls.cert_file and listen.tls.key_file "
            "to serve HTTPS, or listen.plain_http: true if something else encrypts the traffic (the start is then logged as a warning)"
        )
