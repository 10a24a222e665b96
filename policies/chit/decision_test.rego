package chit_test

import rego.v1

# How these tests are written, so that they run on both engines:
# - input is replaced key by key (`with input.attestation as …`): rego-cpp
#   1.5, the embedded engine, crashes on `with input as …` when the policy
#   calls any function;
# - values are bound to local variables before `with … as`: rego-cpp
#   ignores `with data.x as <rule>`;
# - string literals are never passed through a user-defined function: in
#   rego-cpp such a string keeps its quotes (a lookup with it finds nothing).

bindings := {
	"kubernetes": {"prod": {"payments": {
		"agent": {"scope": ["read:db", "write:db"], "audience": ["https://db.internal"], "ttl": 600},
		"regional": {"scope": ["read:db"], "audience": ["https://db.internal"], "regions": ["eu-west-1"]},
		"deployer": {"audience": ["https://db.internal"], "aws": {"role_arn": "arn:aws:iam::123456789012:role/deployer"}},
	}}},
	"aws_iid": {"123456789012": {
		"us-east-1": {
			"scope": ["read:db"], "audience": ["https://db.internal"],
			"aws": {"role_arn": "arn:aws:iam::123456789012:role/agent", "tags": {"team": "payments"}},
		},
		"eu-west-1": {"scope": ["read:db"], "audience": ["https://db.internal"], "image_ids": ["ami-0abc"]},
		"eu-west-2": {"scope": ["read:db"], "audience": ["https://db.internal"], "tags": {"team": "payments", "env": "prod"}},
	}},
}

# A verified Kubernetes attestation; tests vary it with object.union.
payments_agent := {
	"kind": "kubernetes", "cluster": "prod", "namespace": "payments",
	"service_account": "agent", "region": "us-east-1",
}

test_bound_workload_is_allowed if {
	a := payments_agent
	s := "spiffe://example.org/k8s/prod/ns/payments/sa/agent"
	b := bindings
	d := data.chit.decision with input.attestation as a with input.subject as s with data.bindings as b
	d.allow == true
	d.scope == ["read:db", "write:db"]
	d.audience == ["https://db.internal"]
	d.ttl == 600
}

test_unknown_service_account_is_denied if {
	a := object.union(payments_agent, {"service_account": "intruder"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	d.reasons == ["no binding for this workload"]
}

test_unknown_namespace_is_denied if {
	a := object.union(payments_agent, {"namespace": "billing"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
}

test_unknown_cluster_is_denied if {
	a := object.union(payments_agent, {"cluster": "staging"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
}

test_ttl_defaults_to_900 if {
	a := object.union(payments_agent, {"service_account": "regional", "region": "eu-west-1"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == true
	d.ttl == 900
}

test_region_outside_the_binding_is_denied if {
	a := object.union(payments_agent, {"service_account": "regional"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	d.reasons == ["region not allowed by the binding"]
}

test_region_missing_when_required_is_denied if {
	a := json.remove(object.union(payments_agent, {"service_account": "regional", "region": "x"}), ["region"])
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
}

test_other_kind_with_the_same_names_is_denied if {
	a := json.patch(payments_agent, [{"op": "replace", "path": "/kind", "value": "gcp"}])
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
}

test_shipped_dev_binding if {
	a := object.union(payments_agent, {"cluster": "dev", "namespace": "demo"})
	d := data.chit.decision with input.attestation as a
	d.allow == true
	d.audience == ["https://demo.chit.invalid"]
}

# --- GCP: project → service account email ---

gcp_bindings := {"gcp": {"payments-prod": {
	"agent@payments-prod.iam.gserviceaccount.com": {"scope": ["read:db"], "audience": ["https://db.internal"], "ttl": 300},
	"zonal@payments-prod.iam.gserviceaccount.com": {"scope": ["read:db"], "audience": ["https://db.internal"], "zones": ["europe-west1-b", "europe-west1-c"]},
	"regional@payments-prod.iam.gserviceaccount.com": {"scope": ["read:db"], "audience": ["https://db.internal"], "regions": ["europe-west1"]},
	"labelled@payments-prod.iam.gserviceaccount.com": {"scope": ["read:db"], "audience": ["https://db.internal"], "labels": {"team": "payments", "env": "prod"}},
}}}

# A verified full-format Compute Engine attestation.
gcp_agent := {
	"kind": "gcp", "issuer": "https://accounts.google.com",
	"project_id": "payments-prod", "project_number": 733428162846,
	"zone": "europe-west1-b", "region": "europe-west1",
	"instance_id": "4520031799277581759", "instance_name": "agent-vm-1",
	"email": "agent@payments-prod.iam.gserviceaccount.com", "sub": "104318925392713268142",
}

test_gcp_bound_service_account_is_allowed if {
	a := gcp_agent
	b := gcp_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == true
	d.scope == ["read:db"]
	d.ttl == 300
}

test_gcp_unknown_service_account_is_denied if {
	a := object.union(gcp_agent, {"email": "other@payments-prod.iam.gserviceaccount.com"})
	b := gcp_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	d.reasons == ["no binding for this workload"]
}

test_gcp_same_service_account_in_another_project_is_denied if {
	a := object.union(gcp_agent, {"project_id": "payments-dev"})
	b := gcp_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
}

test_gcp_zone_in_the_binding_is_allowed if {
	a := object.union(gcp_agent, {"email": "zonal@payments-prod.iam.gserviceaccount.com", "zone": "europe-west1-c"})
	b := gcp_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == true
}

test_gcp_zone_outside_the_binding_is_denied if {
	a := object.union(gcp_agent, {"email": "zonal@payments-prod.iam.gserviceaccount.com", "zone": "europe-west1-d"})
	b := gcp_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
}

test_gcp_region_outside_the_binding_is_denied if {
	a := object.union(gcp_agent, {"email": "regional@payments-prod.iam.gserviceaccount.com", "zone": "us-central1-a", "region": "us-central1"})
	b := gcp_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	d.reasons == ["region not allowed by the binding"]
}

# `labels` come from the Compute Engine API (attestors.gcp.verify_instance).
test_gcp_instance_with_the_required_labels_is_allowed if {
	a := object.union(gcp_agent, {"email": "labelled@payments-prod.iam.gserviceaccount.com", "labels": {"team": "payments", "env": "prod", "x": "y"}})
	b := gcp_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == true
}

test_gcp_instance_with_other_labels_is_denied if {
	a := object.union(gcp_agent, {"email": "labelled@payments-prod.iam.gserviceaccount.com", "labels": {"team": "payments", "env": "dev"}})
	b := gcp_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	d.reasons == ["instance labels do not match the binding"]
}

test_gcp_instance_without_known_labels_is_denied_when_labels_are_required if {
	a := object.union(gcp_agent, {"email": "labelled@payments-prod.iam.gserviceaccount.com"})
	b := gcp_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	d.reasons == ["instance labels do not match the binding"]
}

test_gcp_standard_token_matches_no_binding if {
	a := {"kind": "gcp", "issuer": "https://accounts.google.com", "email": "agent@payments-prod.iam.gserviceaccount.com", "sub": "104318925392713268142"}
	b := gcp_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
}

test_gcp_binding_needs_kind_gcp if {
	a := object.union(gcp_agent, {"kind": "aws_iid"})
	b := gcp_bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
}

# The shipped example's project id contains "google", which Google never
# allows in a project id: the example can never match a real VM.
test_shipped_gcp_example_binding if {
	a := object.union(gcp_agent, {"project_id": "example-google-project", "email": "agent@example-google-project.iam.gserviceaccount.com"})
	d := data.chit.decision with input.attestation as a
	d.allow == true
	d.ttl == 600
}

# --- AWS: a role in the binding; EC2 instances by account id → region ---

test_binding_can_carry_an_aws_role if {
	a := object.union(payments_agent, {"service_account": "deployer"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == true
	d.aws == {"role_arn": "arn:aws:iam::123456789012:role/deployer"}
}

test_binding_without_an_aws_role_grants_none if {
	a := payments_agent
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	not "aws" in object.keys(d)
}

# A verified EC2 instance identity document (attestors.aws_iid).
ec2_instance := {
	"kind": "aws_iid", "account_id": "123456789012", "region": "us-east-1",
	"availability_zone": "us-east-1b", "instance_id": "i-0b02d936754a6d637",
	"image_id": "ami-0abc", "instance_type": "t3.micro",
}

test_instance_is_bound_by_account_and_region if {
	a := ec2_instance
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == true
	d.scope == ["read:db"]
	d.aws.role_arn == "arn:aws:iam::123456789012:role/agent"
	d.aws.tags == {"team": "payments"}
}

test_instance_of_another_account_is_denied if {
	a := object.union(ec2_instance, {"account_id": "210987654321"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	d.reasons == ["no binding for this workload"]
}

test_instance_in_an_unbound_region_is_denied if {
	a := object.union(ec2_instance, {"region": "ap-south-1", "availability_zone": "ap-south-1a"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
}

test_instance_with_an_allowed_image_is_allowed if {
	a := object.union(ec2_instance, {"region": "eu-west-1", "availability_zone": "eu-west-1a"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == true
}

test_instance_with_another_image_is_denied if {
	a := object.union(ec2_instance, {"region": "eu-west-1", "availability_zone": "eu-west-1a", "image_id": "ami-0bad"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	d.reasons == ["image not allowed by the binding"]
}

test_instance_with_the_required_tags_is_allowed if {
	a := object.union(ec2_instance, {"region": "eu-west-2", "tags": {"team": "payments", "env": "prod", "x": "y"}})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == true
}

test_instance_with_a_wrong_tag_is_denied if {
	a := object.union(ec2_instance, {"region": "eu-west-2", "tags": {"team": "payments", "env": "dev"}})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	d.reasons == ["instance tags do not match the binding"]
}

test_instance_without_known_tags_is_denied_when_tags_are_required if {
	a := object.union(ec2_instance, {"region": "eu-west-2"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
	d.reasons == ["instance tags do not match the binding"]
}

test_kubernetes_names_do_not_match_an_instance_binding if {
	a := object.union(payments_agent, {"cluster": "123456789012", "namespace": "us-east-1"})
	b := bindings
	d := data.chit.decision with input.attestation as a with data.bindings as b
	d.allow == false
}

# --- deny: refusals added by any module of package chit ---

test_a_deny_refuses_a_bound_workload if {
	a := payments_agent
	b := bindings
	refusals := {"no exchanges on weekends"}
	d := data.chit.decision with input.attestation as a with data.bindings as b with data.chit.deny as refusals
	d == {"allow": false, "reasons": ["no exchanges on weekends"]}
}

test_every_deny_message_is_a_reason_in_order if {
	a := payments_agent
	b := bindings
	refusals := {"z: last", "a: first"}
	d := data.chit.decision with input.attestation as a with data.bindings as b with data.chit.deny as refusals
	d.reasons == ["a: first", "z: last"]
}

test_a_deny_comes_before_the_binding_constraints if {
	a := object.union(payments_agent, {"service_account": "regional"})
	b := bindings
	refusals := {"maintenance"}
	d := data.chit.decision with input.attestation as a with data.bindings as b with data.chit.deny as refusals
	d.reasons == ["maintenance"]
}

test_no_deny_message_refuses_nothing if {
	a := payments_agent
	b := bindings
	refusals := set()
	d := data.chit.decision with input.attestation as a with data.bindings as b with data.chit.deny as refusals
	d.allow == true
}
