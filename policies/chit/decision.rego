# chit's shipped policy: default deny; grants come from the bindings in data.
#
# input and decision follow DESIGN.md "Policy contract"; the data layout and
# how to extend and test this policy are in policies/README.md.
package chit

import rego.v1

# The decision is always defined, so an unknown workload is an explicit deny.
default decision := {"allow": false, "reasons": ["no binding for this workload"]}

# The first rule whose condition holds decides: every denial comes before the
# grant. A denial's value must not depend on anything that can be undefined,
# or the chain would fall through to the next rule.
decision := {"allow": false, "reasons": ["region not allowed by the binding"]} if {
	binding.regions
	not input.attestation.region in binding.regions
} else := {
	"allow": true,
	"scope": object.get(binding, "scope", []),
	"audience": object.get(binding, "audience", []),
	"ttl": object.get(binding, "ttl", 900),
	"reasons": ["binding matched"],
} if {
	binding
}

# The binding of the workload, found by key one level at a time and never by
# iterating over data: rego-cpp looks a key up by scanning its object, so small
# levels (clusters, then namespaces, then service accounts) keep a decision
# fast with thousands of bindings, while a comprehension over data would be
# quadratic.
binding := data.bindings.kubernetes[input.attestation.cluster][input.attestation.namespace][input.attestation.service_account] if {
	input.attestation.kind == "kubernetes"
}

# GCP, full-format tokens: project → service account email. The service
# account attached to a VM is what a platform team grants to (as in IAM) and
# the project bounds who could attach it; placement is a restriction inside
# the binding (`regions`, or `zones`: checked here so that other kinds pay
# nothing for it). Standard-format tokens name no project: no binding here.
binding := b if {
	input.attestation.kind == "gcp"
	b := data.bindings.gcp[input.attestation.project_id][input.attestation.email]
	input.attestation.zone in object.get(b, "zones", [input.attestation.zone])
}
