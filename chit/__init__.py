"""chit: workload-identity token exchange. Attested workloads in, 15-minute scoped credentials out (RFC 8693).

- `chit.agent`: what runs where the workload runs (standard library only);
- `chit.attestors`: one package per platform, verifier and collector;
- `chit.policy`: the policy input, the engines, the decision;
- `chit.server`: the exchange server, its HTTP surface and its commands;
- shared by both sides: `chit.protocol` (the contract's names), `chit.httpclient`,
  `chit.strictjson`, `chit.urls`; by the server side: `chit.section`, `chit.state`,
  `chit.metrics`, `chit.aws`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("chit")
except PackageNotFoundError:  # a source checkout that was not installed
    __version__ = "0+unknown"
