# chit's shipped policy: default deny, grants driven by the bindings in data.json.
#
# input and decision follow DESIGN.md "Policy contract"; see policies/README.md.
package chit

import rego.v1

# The decision is always defined, so an unknown workload is an explicit deny.
default decision := {"allow": false, "reasons": ["no binding for this workload"]}

decision := verdict if {
	b := binding
	verdict := evaluate(b)
}

# Bindings are found by key, one level at a time, never by iterating over
# data: rego-cpp looks keys up by scanning an object, so keeping every level
# small (clusters, then namespaces, then service accounts) keeps a decision
# fast with thousands of bindings, and a comprehension over data would be
# quadratic.
binding := {"name": concat("/", ["kubernetes", a.cluster, a.namespace, a.service_account]), "grant": grant} if {
	a := input.attestation
	a.kind == "kubernetes"
	grant := data.bindings.kubernetes[a.cluster][a.namespace][a.service_account]
}

# The first failing condition of a binding names the denial.
evaluate(b) := deny(sprintf("region %v is not allowed for this workload", [object.get(input.attestation, "region", null)])) if {
	not region_allowed(b)
} else := allow(b)

region_allowed(b) if not "regions" in object.keys(b.grant)

region_allowed(b) if input.attestation.region in b.grant.regions

allow(b) := {
	"allow": true,
	"scope": object.get(b.grant, "scope", []),
	"audience": object.get(b.grant, "audience", []),
	"ttl": object.get(b.grant, "ttl", 900),
	"reasons": [concat(" ", ["binding", b.name])],
}

deny(reason) := {"allow": false, "reasons": [reason]}
