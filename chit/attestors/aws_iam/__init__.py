"""AWS IAM: a signed `sts:GetCallerIdentity` request (Lambda, ECS, EKS Pod Identity, IRSA).

The pattern of Vault's `iam` auth method: the workload signs (SigV4, botocore)
a GetCallerIdentity request with its own credentials, naming this chit server
in a signed header, and sends the request instead of sending it to STS; chit
checks it, sends it to the configured STS endpoint itself, and STS's answer —
the caller's ARN, account and user id — is the verified fact. The signature is
checked by STS, never by chit: chit holds no secret of the workload.

- `envelope`: the subject token's wire format (the agent encodes, the server parses);
- `request`: every check made before the request goes anywhere;
- `caller`: the request sent to STS, and STS's XML answer parsed strictly;
- `principal`: what the caller's ARN names (a role's session, or an IAM user);
- `config`: the `attestors.aws_iam` section; `verifier`: the checks in order;
- `collector`: the agent side, botocore's credentials and signer (`chit[aws]`).
"""

KIND = "aws_iam"
# Names this chit server inside the signed request, so that a request signed for
# another service (or another chit) is not accepted here: Vault's X-Vault-AWS-IAM-Server-ID.
SERVER_ID_HEADER = "X-Chit-Server-Id"
GET_CALLER_IDENTITY = "Action=GetCallerIdentity&Version=2011-06-15"
DEFAULT_STS_ENDPOINT = "https://sts.amazonaws.com/"  # the global endpoint, signed for us-east-1
