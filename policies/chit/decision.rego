# chit's shipped policy: default deny; grants come from the bindings in data.
#
# input and decision follow docs/reference/policy-contract.md; the data layout and
# how to extend and test this policy are in docs/policy/writing.md and testing.md.
package chit

import rego.v1

# The decision is always defined, so an unknown workload is an explicit deny.
default decision := {"allow": false, "reasons": ["no binding for this workload"]}

# The first rule whose condition holds decides: every refusal comes before the
# grant. A refusal's value must not depend on anything that can be undefined,
# or the chain would fall through to the next rule. The binding is bound to a
# local once per body: each reference to a rule costs the embedded engine time.
#
# 1. `deny`: refusals any module of package chit may add, without editing this
#    file (docs/policy/writing.md "Adding a refusal"):
#        deny contains "no exchanges on weekends" if input.now.weekday in {"Saturday", "Sunday"}
#    Any message refuses the exchange; all of them, sorted, are the reasons.
#    `data.chit.deny` is undefined (no refusal) while no module defines one.
#    (The set's members are sorted as an array: rego-cpp 1.5's sort of a set
#    returns a set.)
# 2. the binding's own constraints (`binding_refusal`, below);
# 3. the binding's grant, with its AWS role when it has one.
decision := {"allow": false, "reasons": refusals} if {
	refusals := sort([message | some message in data.chit.deny])
	count(refusals) > 0
} else := {"allow": false, "reasons": [refusal]} if {
	refusal := binding_refusal
} else := grant if {
	# A binding with an AWS role, for requested_token_type aws-credentials.
	b := binding
	b.aws
	grant := {
		"allow": true,
		"scope": object.get(b, "scope", []),
		"audience": object.get(b, "audience", []),
		"ttl": object.get(b, "ttl", 900),
		"reasons": ["binding matched"],
		"aws": b.aws,
	}
} else := grant if {
	b := binding
	grant := {
		"allow": true,
		"scope": object.get(b, "scope", []),
		"audience": object.get(b, "audience", []),
		"ttl": object.get(b, "ttl", 900),
		"reasons": ["binding matched"],
	}
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

# EC2 instances: by account id, then region.
binding := data.bindings.aws_iid[input.attestation.account_id][input.attestation.region] if {
	input.attestation.kind == "aws_iid"
}

# The optional constraints, as one rule: the first that fails names the
# refusal. `image_ids` and `tags` apply to EC2 instances, `labels` to GCP VMs;
# tags and labels are known only with the attestor's verify_instance (without
# it, a binding requiring them grants nothing). `data.allowed_regions[kind]`
# and a namespace's image signers apply whatever the binding says.
binding_refusal := "region not allowed by the binding" if {
	binding.regions
	not input.attestation.region in binding.regions
} else := "image not allowed by the binding" if {
	binding.image_ids
	not input.attestation.image_id in binding.image_ids
} else := "instance tags do not match the binding" if {
	some key, value in binding.tags
	not input.attestation.tags[key] == value
} else := "instance labels do not match the binding" if {
	some key, value in binding.labels
	not input.attestation.labels[key] == value
} else := "region not allowed for this kind of workload" if {
	allowed := data.allowed_regions[input.attestation.kind]
	not input.attestation.region in allowed
} else := "outside the hours of the binding" if {
	binding.hours
	not within_hours
} else := "signed images required, but the workload's images are unknown" if {
	some _ in image_signers
	not has_images
} else := "an image is not signed by a required signer" if {
	some signers in image_signers
	some image in input.images
	count({s | some s in image.signers; s in signers}) == 0
}

# Business hours (`hours` of a binding), in UTC from input.now: `days` by
# name, `start` ≤ hour < `end`; a window with `end` < `start` spans midnight.
# A malformed window matches no hour, so it denies: `start` and `end` must be
# numbers (the engines order a number and a string differently).
within_hours if {
	input.now.weekday in binding.hours.days
	hours_are_numbers
	binding.hours.start <= input.now.hour
	input.now.hour < binding.hours.end
}

within_hours if {
	input.now.weekday in binding.hours.days
	hours_are_numbers
	binding.hours.end < binding.hours.start
	binding.hours.start <= input.now.hour
}

within_hours if {
	input.now.weekday in binding.hours.days
	hours_are_numbers
	binding.hours.end < binding.hours.start
	input.now.hour < binding.hours.end
}

hours_are_numbers if {
	is_number(binding.hours.start)
	is_number(binding.hours.end)
}

# No image list (pod_lookup off) and an empty one both mean: nothing to vouch for.
has_images if count(input.images) > 0

# Signers every image must carry one of: the binding's `image_signers` and its
# namespace's (data.namespaces.kubernetes[cluster][namespace].image_signers).
# Both apply when both are set: a binding cannot weaken its namespace's rule.
image_signers contains signers if {
	signers := binding.image_signers
}

image_signers contains signers if {
	input.attestation.kind == "kubernetes"
	signers := data.namespaces.kubernetes[input.attestation.cluster][input.attestation.namespace].image_signers
}
