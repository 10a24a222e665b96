package chit_engine_test

import rego.v1

# The built-ins the shipped policy calls, with the answers OPA gives (OPA's
# policy reference, "Built-in Functions"), so that an engine that answers
# otherwise fails here first. tests/server/test_policy_dialect.py checks that
# this file calls every built-in chit/decision.rego calls: a policy change that
# uses a new built-in needs a test of it here.

test_count if {
	count([1, 2, 3]) == 3
	count({"a", "b"}) == 2
	count({"a": 1, "b": 2}) == 2
	count("héllo") == 5 # characters, not bytes
	count([]) == 0
}

test_object_get if {
	object.get({"a": 1}, "a", 0) == 1
	object.get({"a": 1}, "b", 0) == 0
	object.get({"a": {"b": [2]}}, ["a", "b"], 0) == [2]
	object.get({"a": {"b": 2}}, ["a", "c"], "none") == "none"
	object.get({"scope": []}, "scope", ["default"]) == []
}

test_membership if {
	"a" in ["a", "b"]
	"a" in {"a", "b"}
	1 in {"k": 1} # an object's values, not its keys
	not "c" in ["a", "b"]
	not "k" in {"k": 1}
	not "a" in []
}

test_number_comparisons if {
	1 < 2
	2 > 1
	2 <= 2
	1.5 < 2
	not 2 < 2
	not 3 <= 2
	not 1 > 2
}

test_string_comparisons if {
	"a" < "b"
	"abc" < "abd"
	"10" < "9" # by character, not by value
	not "b" < "a"
}

test_type_checks if {
	is_number(8)
	is_number(8.5)
	not is_number("8")
	not is_number(null)
}

# rego-cpp 1.5's sort of a set returns a set (OPA: an array): the policy sorts an array.
test_sort if {
	sort(["b", "a", "c"]) == ["a", "b", "c"]
	sort([m | some m in {"b", "a"}]) == ["a", "b"] # a set's members, as the decision sorts deny messages
	sort([]) == []
	sort(["B", "a"]) == ["B", "a"] # by code point
}
