"""AWS: EC2 instance identity documents (IID), verified against AWS's regional certificates.

The subject token (docs/reference/http-api.md "POST /token — request") carries the document
exactly as IMDS served it, its signature in one of two forms, and the client's
nonce:

- `signature`: RSA PKCS#1 v1.5 / SHA-256 over the exact document bytes,
  checked with the `signature/REGION.pem` certificate of the region the
  document names;
- `rsa2048`: PKCS#7 SignedData (SHA-256) checked with `rsa2048/REGION.pem`;
- `pkcs7` (DSA / SHA-1) is refused.

Only the certificate of the document's own region is ever tried, and it must be
valid now. An IID never expires and anything on the instance can read it, so
each instance is bound on first use to a hash of the client's nonce (docs/reference
"AWS nonce"). With `verify_instance`, DescribeInstances confirms the instance
is pending or running and adds its tags, VPC, subnet, instance profile and
image to the facts.

- `config`: the `attestors.aws_iid` section;
- `envelope`: the subject token's wire format (the agent encodes, the server parses);
- `document`: the document's fields;
- `certificates`: AWS's regional certificates (shipped in `certificates/`);
- `signature`, `pkcs7`: the two signature forms;
- `bindings`: the nonce bindings in the state store (replay);
- `verifier`: the checks in order; `ec2`: DescribeInstances (`verify_instance`);
- `collector`: the agent side, IMDSv2 and the instance nonce file.
"""

KIND = "aws_iid"
