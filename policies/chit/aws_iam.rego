# AWS IAM (Lambda, ECS, EKS Pod Identity, IRSA): the binding of a role's sessions,
# for the shipped decision: data.bindings.aws_iam[ACCOUNT_ID][ROLE_NAME]. IAM users
# (only with attestors.aws_iam.allow_iam_users) are bound apart, by user name:
# data.bindings.aws_iam_users[ACCOUNT_ID][USER_NAME].
package chit

import rego.v1

binding := data.bindings.aws_iam[input.attestation.account_id][input.attestation.role_name] if {
	input.attestation.kind == "aws_iam"
	input.attestation.principal_type == "assumed-role"
}

binding := data.bindings.aws_iam_users[input.attestation.account_id][input.attestation.user_name] if {
	input.attestation.kind == "aws_iam"
	input.attestation.principal_type == "user"
}
