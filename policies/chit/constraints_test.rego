package chit_constraints_test

import rego.v1

# Unit tests of the optional constraints of the shipped policy: business
# hours, region allowlists per kind, and image signers per binding and per
# namespace. Written for both engines (see decision_test.rego's header).

bindings := {"kubernetes": {"prod": {"payments": {
	"agent": {"scope": ["read:db"], "audience": ["https://db.internal"]},
	"office": {"audience": ["https://db.internal"], "hours": {"days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"], "start": 8, "end": 18}},
	"night": {"audience": ["https://db.internal"], "hours": {"days": ["Tuesday"], "start": 22, "end": 6}},
	"no-days": {"audience": ["https://db.internal"], "hours": {"start": 0, "end": 24}},
	"text-hours": {"audience": ["https://db.internal"], "hours": {"days": ["Tuesday"], "start": "8", "end": "18"}},
	"text-night": {"audience": ["https://db.internal"], "hours": {"days": ["Tuesday"], "start": "22", "end": "06"}},
	"release-only": {"audience": ["https://db.internal"], "image_signers": ["release"]},
	"weaker": {"audience": ["https://db.internal"], "image_signers": ["dev"]},
}}}}

payments := {"kind": "kubernetes", "cluster": "prod", "namespace": "payments", "service_account": "agent", "region": "us-east-1"}

tuesday_10 := {"unix": 1795341600, "rfc3339": "2026-11-24T10:00:00Z", "weekday": "Tuesday", "hour": 10}

signed_by_release := [
	{"ref": "registry.example/agent@sha256:aa", "digest": "sha256:aa", "signed": true, "signers": ["release"]},
	{"ref": "registry.example/sidecar@sha256:bb", "digest": "sha256:bb", "signed": true, "signers": ["dev", "release"]},
]

one_unsigned := [
	{"ref": "registry.example/agent@sha256:aa", "digest": "sha256:aa", "signed": true, "signers": ["release"]},
	{"ref": "registry.example/debug@sha256:cc", "digest": "sha256:cc", "signed": false, "signers": []},
]

# --- business hours ---------------------------------------------------------------

test_inside_business_hours_is_allowed if {
	a := object.union(payments, {"service_account": "office"})
	b := bindings
	t := tuesday_10
	d := data.chit.decision with input.attestation as a with input.now as t with data.bindings as b
	d.allow == true
}

test_before_the_window_opens_is_denied if {
	a := object.union(payments, {"service_account": "office"})
	b := bindings
	t := object.union(tuesday_10, {"hour": 7})
	d := data.chit.decision with input.attestation as a with input.now as t with data.bindings as b
	d.allow == false
	d.reasons == ["outside the hours of the binding"]
}

test_the_end_hour_is_outside_the_window if {
	a := object.union(payments, {"service_account": "office"})
	b := bindings
	t := object.union(tuesday_10, {"hour": 18})
	d := data.chit.decision with input.attestation as a with input.now as t with data.bindings as b
	d.allow == false
}

test_weekend_is_denied if {
	a := object.union(payments, {"service_account": "office"})
	b := bindings
	t := object.union(tuesday_10, {"weekday": "Saturday"})
	d := data.chit.decision with input.attestation as a with input.now as t with data.bindings as b
	d.allow == false
}

test_window_across_midnight if {
	a := object.union(payments, {"service_account": "night"})
	b := bindings
	late := object.union(tuesday_10, {"hour": 23})
	early := object.union(tuesday_10, {"hour": 5})
	noon := object.union(tuesday_10, {"hour": 12})
	d1 := data.chit.decision with input.attestation as a with input.now as late with data.bindings as b
	d2 := data.chit.decision with input.attestation as a with input.now as early with data.bindings as b
	d3 := data.chit.decision with input.attestation as a with input.now as noon with data.bindings as b
	d1.allow == true
	d2.allow == true
	d3.allow == false
}

test_malformed_hours_deny if {
	a := object.union(payments, {"service_account": "no-days"})
	b := bindings
	t := tuesday_10
	d := data.chit.decision with input.attestation as a with input.now as t with data.bindings as b
	d.allow == false
}

# Hours written as strings match no hour, on either engine (OPA orders every number
# before every string, rego-cpp the other way round).
test_hours_that_are_not_numbers_deny if {
	b := bindings
	t := tuesday_10
	a1 := object.union(payments, {"service_account": "text-hours"})
	a2 := object.union(payments, {"service_account": "text-night"})
	d1 := data.chit.decision with input.attestation as a1 with input.now as t with data.bindings as b
	d2 := data.chit.decision with input.attestation as a2 with input.now as t with data.bindings as b
	d1.reasons == ["outside the hours of the binding"]
	d2.reasons == ["outside the hours of the binding"]
}

test_no_hours_means_any_time if {
	a := payments
	b := bindings
	t := object.union(tuesday_10, {"weekday": "Sunday", "hour": 3})
	d := data.chit.decision with input.attestation as a with input.now as t with data.bindings as b
	d.allow == true
}

# --- region allowlists per kind -----------------------------------------------------

test_region_outside_the_kinds_allowlist_is_denied if {
	a := object.union(payments, {"region": "eu-west-1"})
	b := bindings
	r := {"kubernetes": ["us-east-1", "us-west-2"]}
	d := data.chit.decision with input.attestation as a with data.bindings as b with data.allowed_regions as r
	d.allow == false
	d.reasons == ["region not allowed for this kind of workload"]
}

test_region_inside_the_kinds_allowlist_is_allowed if {
	a := payments
	b := bindings
	r := {"kubernetes": ["us-east-1", "us-west-2"]}
	d := data.chit.decision with input.attestation as a with data.bindings as b with data.allowed_regions as r
	d.allow == true
}

test_another_kinds_allowlist_does_not_apply if {
	a := object.union(payments, {"region": "eu-west-1"})
	b := bindings
	r := {"aws_iid": ["us-east-1"]}
	d := data.chit.decision with input.attestation as a with data.bindings as b with data.allowed_regions as r
	d.allow == true
}

test_missing_region_under_an_allowlist_is_denied if {
	a := json.remove(payments, ["region"])
	b := bindings
	r := {"kubernetes": ["us-east-1"]}
	d := data.chit.decision with input.attestation as a with data.bindings as b with data.allowed_regions as r
	d.allow == false
}

# --- image signers ----------------------------------------------------------------------

test_images_signed_by_the_required_signer_are_allowed if {
	a := object.union(payments, {"service_account": "release-only"})
	b := bindings
	i := signed_by_release
	d := data.chit.decision with input.attestation as a with input.images as i with data.bindings as b
	d.allow == true
}

test_one_unsigned_image_is_denied if {
	a := object.union(payments, {"service_account": "release-only"})
	b := bindings
	i := one_unsigned
	d := data.chit.decision with input.attestation as a with input.images as i with data.bindings as b
	d.allow == false
	d.reasons == ["an image is not signed by a required signer"]
}

test_image_signed_by_another_signer_is_denied if {
	a := object.union(payments, {"service_account": "weaker"})
	b := bindings
	i := [{"ref": "registry.example/agent@sha256:aa", "digest": "sha256:aa", "signed": true, "signers": ["release"]}]
	d := data.chit.decision with input.attestation as a with input.images as i with data.bindings as b
	d.allow == false
}

test_an_empty_image_list_is_denied_when_signers_are_required if {
	a := object.union(payments, {"service_account": "release-only"})
	b := bindings
	i := []
	d := data.chit.decision with input.attestation as a with input.images as i with data.bindings as b
	d.allow == false
	d.reasons == ["signed images required, but the workload's images are unknown"]
}

test_unknown_images_are_denied_when_signers_are_required if {
	a := object.union(payments, {"service_account": "release-only"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	d.reasons == ["signed images required, but the workload's images are unknown"]
}

test_namespace_requirement_applies_to_every_binding if {
	a := payments
	b := bindings
	n := {"kubernetes": {"prod": {"payments": {"image_signers": ["release"]}}}}
	unsigned := one_unsigned
	signed := signed_by_release
	d1 := data.chit.decision with input.attestation as a with input.images as unsigned with data.bindings as b with data.namespaces as n
	d2 := data.chit.decision with input.attestation as a with input.images as signed with data.bindings as b with data.namespaces as n
	d1.allow == false
	d2.allow == true
}

test_a_binding_cannot_weaken_its_namespace_requirement if {
	a := object.union(payments, {"service_account": "weaker"})
	b := bindings
	n := {"kubernetes": {"prod": {"payments": {"image_signers": ["release"]}}}}
	dev_only := [{"ref": "registry.example/agent@sha256:aa", "digest": "sha256:aa", "signed": true, "signers": ["dev"]}]
	both := [{"ref": "registry.example/agent@sha256:aa", "digest": "sha256:aa", "signed": true, "signers": ["dev", "release"]}]
	d1 := data.chit.decision with input.attestation as a with input.images as dev_only with data.bindings as b with data.namespaces as n
	d2 := data.chit.decision with input.attestation as a with input.images as both with data.bindings as b with data.namespaces as n
	d1.allow == false
	d2.allow == true
}

test_other_namespaces_are_not_affected if {
	a := payments
	b := bindings
	n := {"kubernetes": {"prod": {"billing": {"image_signers": ["release"]}}}}
	i := one_unsigned
	d := data.chit.decision with input.attestation as a with input.images as i with data.bindings as b with data.namespaces as n
	d.allow == true
}
