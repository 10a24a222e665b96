"""The Kubernetes collector (agent side): the kubelet writes a projected token with
chit's audience into the pod and rotates it; the collector reads that file afresh
for every exchange.
"""

from __future__ import annotations

from pathlib import Path

from chit.attestors.base import CollectionFailed, Collector, PlatformAbsent, SubjectToken
from chit.attestors.kubernetes import KIND
from chit.protocol import TOKEN_TYPE_JWT

# Where deploy/examples/agent.yaml mounts the projected token (a serviceAccountToken
# volume source with chit's audience); not the default service-account token, whose
# audience is the API server.
DEFAULT_TOKEN_FILE = Path("/var/run/secrets/chit/token")
MAX_TOKEN_FILE_BYTES = 64 * 1024


class KubernetesCollector(Collector):
    kind = KIND

    def __init__(self, token_file: Path = DEFAULT_TOKEN_FILE):
        self.token_file = token_file

    def collect(self) -> SubjectToken:
        try:
            with self.token_file.open("rb") as file:
                raw = file.read(MAX_TOKEN_FILE_BYTES + 1)
        except FileNotFoundError:
            raise PlatformAbsent(f"no Kubernetes token file at {self.token_file}") from None
        except OSError as error:
            raise CollectionFailed(f"cannot read the Kubernetes token file {self.token_file}: {error.strerror}") from None
        token = raw.decode("ascii", errors="replace").strip()
        # The kubelet writes a compact JWS; anything else is the wrong file.
        if len(raw) > MAX_TOKEN_FILE_BYTES or token.count(".") != 2 or not token.isascii() or not token.isprintable():
            raise CollectionFailed(f"{self.token_file} does not hold a service-account token (a JWT)")
        return SubjectToken(token, TOKEN_TYPE_JWT)
