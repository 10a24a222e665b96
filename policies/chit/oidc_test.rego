package chit_test

import rego.v1

# The examples of docs/policy/writing.md: a repository's protected branch may
# deploy; a pull-request run, a fork, another event may only read or nothing.
# Written as decision_test.rego is (see there): input replaced key by key.

ci_bindings := {"oidc": {
	"github": {"65/74": {
		"when": {"ref": ["refs/heads/main"], "event_name": ["push", "workflow_dispatch"]},
		"scope": ["deploy:write", "read"], "audience": ["https://deploy.internal"],
		"otherwise": {"scope": ["read"], "audience": ["https://deploy.internal"]},
	}},
	"gitlab": {"99/4242": {
		"when": {"ref_protected": [true], "ref_type": ["branch"]},
		"scope": ["deploy:write", "read"], "audience": ["https://deploy.internal"],
		"otherwise": {"scope": ["read"], "audience": ["https://deploy.internal"]},
	}},
	"buildkite": {"acme/deploy": {"when": {"build_branch": ["main"]}, "scope": ["deploy:write"]}},
}}

main_push := {
	"kind": "oidc", "issuer_name": "github", "workload": "65/74", "preset": "github",
	"repository": "octo-org/octo-repo", "repository_id": "74", "repository_owner": "octo-org",
	"repository_owner_id": "65", "ref": "refs/heads/main", "ref_type": "branch", "event_name": "push",
}

test_protected_branch_push_may_deploy if {
	a := main_push
	b := ci_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == true
	d.scope == ["deploy:write", "read"]
}

test_pull_request_run_may_only_read if {
	a := object.union(main_push, {"ref": "refs/pull/7/merge", "event_name": "pull_request", "head_ref": "main", "base_ref": "main"})
	b := ci_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == true
	d.scope == ["read"]
}

test_pull_request_target_on_main_may_only_read if {
	a := object.union(main_push, {"event_name": "pull_request_target"})
	b := ci_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.scope == ["read"]
}

test_a_fork_has_no_binding if {
	a := object.union(main_push, {"repository": "fork-owner/octo-repo", "repository_id": "991", "repository_owner": "fork-owner", "repository_owner_id": "990", "workload": "990/991"})
	b := ci_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
}

test_a_missing_fact_holds_no_when if {
	a := object.remove(main_push, ["event_name"])
	b := ci_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.scope == ["read"]
}

test_gitlab_protected_branch_may_deploy_and_others_only_read if {
	a := {"kind": "oidc", "issuer_name": "gitlab", "workload": "99/4242", "ref": "main", "ref_type": "branch", "ref_protected": true}
	b := ci_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.scope == ["deploy:write", "read"]
	u := object.union(a, {"ref": "feature", "ref_protected": false})
	e := data.chit.decision with input.attestation as u with data.bindings as b
	e.scope == ["read"]
}

test_another_issuer_name_has_no_binding if {
	a := object.union(main_push, {"issuer_name": "github-enterprise"})
	b := ci_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
}

test_no_otherwise_means_no_binding if {
	a := {"kind": "oidc", "issuer_name": "buildkite", "workload": "acme/deploy", "build_branch": "feature"}
	b := ci_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	m := object.union(a, {"build_branch": "main"})
	e := data.chit.decision with input.attestation as m with data.bindings as b
	e.scope == ["deploy:write"]
}
