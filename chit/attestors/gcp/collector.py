"""The GCP collector (agent side): a GET of
`http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity?audience=AUDIENCE&format=full`
with the header `Metadata-Flavor: Google`; the answer is the identity token, sent as
subject_token with subject_token_type urn:ietf:params:oauth:token-type:jwt.
"""

from __future__ import annotations

from urllib.parse import urlencode

from chit.attestors.base import CollectionFailed, Collector, PlatformAbsent, SubjectToken, metadata_request, printable
from chit.attestors.gcp import KIND
from chit.httpclient import TransportError
from chit.protocol import TOKEN_TYPE_JWT


METADATA_URL = "http://metadata.google.internal"
IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"
# Google's metadata server answers with this header; a server that does not is not it.
METADATA_FLAVOR = "Google"


class GcpCollector(Collector):
    """A Compute Engine identity token for `audience` (chit's: by default its issuer URL,
    see `gcp.audiences`), in the full format that names the instance."""

    kind = KIND

    def __init__(self, audience: str, metadata_url: str = METADATA_URL):
        self.audience = audience
        self.metadata_url = metadata_url.rstrip("/")

    def collect(self) -> SubjectToken:
        url = self.metadata_url + IDENTITY_PATH + "?" + urlencode({"audience": self.audience, "format": "full"})
        try:
            response = metadata_request("GET", url, {"Metadata-Flavor": METADATA_FLAVOR})
        except (TransportError, ValueError) as error:
            raise PlatformAbsent(f"no GCP metadata server at {self.metadata_url} ({error})") from None
        if response.header("Metadata-Flavor") != METADATA_FLAVOR:
            raise PlatformAbsent(f"{self.metadata_url} answered, but not as Google's metadata server (no Metadata-Flavor: Google)")
        if response.status != 200:
            # e.g. 404 when the VM has no service account: the body is Google's explanation.
            raise CollectionFailed(f"the GCP metadata server refused an identity token: HTTP {response.status} {printable(response.text)}")
        token = response.text.strip()
        if token.count(".") != 2 or not token.isascii() or not token.isprintable():
            raise CollectionFailed("the GCP metadata server's answer is not an identity token")
        return SubjectToken(token, TOKEN_TYPE_JWT)
