package chit_test

import rego.v1

iam_bindings := {
	"aws_iam": {"123456789012": {"report-builder": {"scope": ["read:db"], "audience": ["https://db.internal"]}}},
	"aws_iam_users": {"123456789012": {"ci-bot": {"scope": ["read:db"], "audience": ["https://db.internal"]}}},
}

lambda_role := {
	"kind": "aws_iam", "account_id": "123456789012", "principal_type": "assumed-role",
	"arn": "arn:aws:sts::123456789012:assumed-role/report-builder/report-builder",
	"role_arn": "arn:aws:iam::123456789012:role/report-builder", "role_name": "report-builder",
	"session_name": "report-builder", "user_id": "AROAEXAMPLEID1234567:report-builder",
}

test_a_bound_role_is_allowed if {
	a := lambda_role
	b := iam_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == true
	d.scope == ["read:db"]
}

test_another_role_or_account_is_denied if {
	a := object.union(lambda_role, {"role_name": "admin"})
	b := iam_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	c := object.union(lambda_role, {"account_id": "210987654321"})
	e := data.chit.decision with input.attestation as c with data.bindings as b
	e.allow == false
}

test_a_user_named_like_a_role_is_not_the_role if {
	a := {"kind": "aws_iam", "account_id": "123456789012", "principal_type": "user", "user_name": "report-builder"}
	b := iam_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	u := object.union(a, {"user_name": "ci-bot"})
	e := data.chit.decision with input.attestation as u with data.bindings as b
	e.allow == true
}
