# OIDC issuers (CI runners): the binding of a job, for the shipped decision.
#
# data.bindings.oidc[ISSUER_NAME][WORKLOAD] is found by key, WORKLOAD being the
# path the issuer's subject template makes (GitHub's preset: "OWNER_ID/REPOSITORY_ID";
# GitLab's: "NAMESPACE_ID/PROJECT_ID"; Buildkite's: "ORG_SLUG/PIPELINE_SLUG").
# Its optional `when` maps a fact to the values it may have: when every one
# holds (a fact the token does not carry holds none), the entry is the binding;
# otherwise its `otherwise` is, if it has one. docs/policy/writing.md shows examples.
package chit

import rego.v1

oidc_entry := data.bindings.oidc[input.attestation.issuer_name][input.attestation.workload] if {
	input.attestation.kind == "oidc"
}

binding := oidc_entry if {
	input.attestation.kind == "oidc"
	not oidc_when_fails
} else := oidc_entry.otherwise

oidc_when_fails if {
	some fact, allowed in object.get(oidc_entry, "when", {})
	not input.attestation[fact] in allowed
}
