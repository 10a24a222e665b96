# OIDC issuers (CI runners): the binding of a job, for the shipped decision.
#
# data.bindings.oidc[ISSUER_NAME][WORKLOAD] is a list of bindings tried in order;
# the first whose `when` holds is the job's binding. WORKLOAD is the path the
# issuer's subject template makes (GitHub's preset: "OWNER_ID/REPOSITORY_ID";
# GitLab's: "NAMESPACE_ID/PROJECT_ID"; Buildkite's: "ORG_SLUG/PIPELINE_SLUG").
# `when` maps a fact to the values it may have; every one must hold, and a fact
# the token does not carry holds none. docs/policy/writing.md shows examples.
package chit

import rego.v1

binding := oidc_entries[i] if {
	some i in oidc_matching
	not i in oidc_preceded
}

oidc_entries := data.bindings.oidc[input.attestation.issuer_name][input.attestation.workload] if {
	input.attestation.kind == "oidc"
}

# The positions of the entries with a `when` condition that does not hold.
oidc_unmet contains i if {
	some i, entry in oidc_entries
	some fact, allowed in object.get(entry, "when", {})
	not input.attestation[fact] in allowed
}

# The positions of the entries that match (`some i, e in` is not for comprehensions in rego-cpp),
# and of those that a matching entry comes before: the one left is the first.
oidc_matching := {i | some i; oidc_entries[i]; not i in oidc_unmet}

oidc_preceded contains i if {
	some i in oidc_matching
	some j in oidc_matching
	j < i
}
