"""The names of chit's protocol that both sides use (docs/reference/http-api.md "POST /token — request").

RFC 8693 §3 registers the token type URNs `urn:ietf:params:oauth:token-type:*`;
the `urn:chit:…` ones are chit's own. The agent writes them, the server reads
them: they live here, in a module that imports nothing.
"""

GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"

TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_TYPE_AWS_IID = "urn:chit:params:oauth:token-type:aws-iid"
TOKEN_TYPE_AWS_IAM = "urn:chit:params:oauth:token-type:aws-iam"
TOKEN_TYPE_AWS_CREDENTIALS = "urn:chit:params:oauth:token-type:aws-credentials"

# Subject tokens that are JWTs, routed to a verifier by their `iss`.
JWT_TOKEN_TYPES = frozenset({TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN})

# docs/reference/http-api.md: a credential chit issues never lives longer than 15 minutes.
MAX_TOKEN_TTL = 900
