"""GCP: Compute Engine instance identity tokens, verified against Google's certificates.

A VM asks its metadata server for an identity token with chit's audience and
`format=full`; Google signs it (RS256) with one of the keys it publishes at
`gcp.certs_url` as `{kid: PEM certificate}`. chit fetches and caches those
certificates itself (per their HTTP cache headers), has google-auth check the
signature, and adds what google-auth leaves to the caller: the issuer, the
algorithm, an audience that is always given, the validity window and lifetime
cap, and the `google.compute_engine` claims that name the instance. With
`verify_instance`, the Compute Engine API's instances.get (with chit's
Application Default Credentials) confirms the instance exists, is the one the
token names, and is running, and adds its labels, machine type, network and
service accounts to the facts.

- `config`: the `attestors.gcp` section;
- `freshness`: how long Google's certificates stay fresh (RFC 9111 cache headers);
- `certificates`: Google's certificates, fetched, cached, checked by google-auth;
- `claims`: the service account and the instance a token names;
- `single_use`: `single_use: true`, a token accepted once;
- `verifier`: the checks in order; `compute`: instances.get (`verify_instance`);
- `collector`: the agent side, the metadata server's identity token.
"""

KIND = "gcp"
# docs/operators/gcp.md "GCP issuer": Google writes both forms.
ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
