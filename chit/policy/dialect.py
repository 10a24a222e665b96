"""What the embedded engine (rego-cpp 1.5) must refuse at load, because it would decide
differently from OPA: fail-open differences become load errors naming file and line.

rego-cpp compiles some policies OPA refuses and evaluates some built-ins
differently (measured against OPA's conformance cases and probes; the policy
guide lists every difference with OPA's behaviour beside it). A difference
that could turn a deny into an allow must not reach a decision, so the
compiled plan and the sources are checked once, at load:

- a call to a function that is neither defined by the policy nor implemented
  by rego-cpp (rego-cpp declares many built-ins it does not implement, e.g.
  `net.cidr_contains`: they compile and return undefined, and `not undefined`
  is true);
- a built-in rego-cpp implements unfaithfully (`UNFAITHFUL_BUILTINS`);
- a variable that is read but never bound (OPA: "var … is unsafe"; rego-cpp
  reads it as undefined, so `not usr == "mallory"` holds);
- `with` outside test modules (crashes rego-cpp or is misread by it; tests
  are rewritten so that it works: `chit.policy.suite`), `sprintf`'s `%q`
  (printed literally);
- data strings the engine cannot carry faithfully (`regocpp.is_faithful`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from chit.policy import regocpp
from chit.policy.source import code_only, line_of

# Built-ins rego-cpp implements, but not as OPA does, in a way a decision can depend on.
_UNESCAPED = "returns the decoded text unescaped, so that a decoded quote or backslash is misread"
UNFAITHFUL_BUILTINS = {
    "base64.decode": _UNESCAPED,
    "base64url.decode": _UNESCAPED,
    "base64url.decode_no_pad": _UNESCAPED,
    "hex.decode": _UNESCAPED,
    "urlquery.decode": _UNESCAPED,
    "urlquery.decode_object": _UNESCAPED,
    "time.parse_rfc3339_ns": "is undefined for timestamps ending in Z, which OPA parses (compare input.now.unix instead)",
    "time.parse_ns": "is undefined for timestamps ending in Z, which OPA parses (compare input.now.unix instead)",
    "object.union": "replaces nested objects where OPA merges them",
    "object.union_n": "replaces nested objects where OPA merges them",
}

# Plan statements whose bare (non-operand) locals they read; every other statement writes
# its bare locals (assignments, calls, dots, makes, resets), and scanstmt reads its first
# local (the collection) and writes the key and the value.
_READING_STATEMENTS = frozenset(
    {
        "rego-isdefinedstmt",
        "rego-isundefinedstmt",
        "rego-returnlocalstmt",
        "rego-resultsetaddstmt",
        "rego-arrayappendstmt",
        "rego-objectinsertstmt",
        "rego-objectinsertoncestmt",
        "rego-setaddstmt",
    }
)
_INPUT_AND_DATA = frozenset({"0", "1"})  # every plan and function receives them as locals 0 and 1
# rego-cpp names the functions it compiles from the policy `g0.data.…`, and each copy it
# makes for a `with` context `g1.…`, `g2.…`.
OWN_FUNCTION = re.compile(r"g\d+\.")
WITH_COPY = re.compile(r"g[1-9]\d*\.")


class DialectError(Exception):
    """A policy the embedded engine would evaluate differently from OPA; the message says where and why."""


@dataclass
class PlanFacts:
    """What a compiled plan does: the functions it calls, and the rules reading unbound variables."""

    calls: set[str] = field(default_factory=set)
    unbound_readers: list[str] = field(default_factory=list)


def _named_children(node: int) -> Iterator[tuple[str, int]]:
    for child in regocpp.children(node):
        yield regocpp.node_type_name(child), child


def _scan_function(node: int, facts: PlanFacts) -> None:
    """One plan or function: the functions it calls, and whether it reads a local nothing writes."""
    written: set[str] = set(_INPUT_AND_DATA)
    read: set[str] = set()

    def visit(statement: int, kind: str) -> None:
        bare = []
        for child_kind, child in _named_children(statement):
            if child_kind == "rego-localindex":
                bare.append(regocpp.node_value(child))
            elif child_kind == "rego-operand":
                read.update(regocpp.node_value(c) for k, c in _named_children(child) if k == "rego-localindex")
            elif child_kind == "rego-irstring":
                if kind == "rego-callstmt":
                    facts.calls.add(regocpp.node_value(child))
            else:
                visit(child, child_kind)
        if kind == "rego-scanstmt" and bare:
            read.add(bare[0])
            written.update(bare[1:])
        elif kind in _READING_STATEMENTS:
            read.update(bare)
        else:  # writers, parameters, a function's result, and anything unknown (never a false alarm)
            written.update(bare)

    visit(node, regocpp.node_type_name(node))
    if read - written:
        name = next((regocpp.node_value(c) for k, c in _named_children(node) if k == "rego-irstring"), "")
        facts.unbound_readers.append(name)


def _is_with_copy(function: int) -> bool:
    """A copy rego-cpp made of a function for a `with` context (`g1.…`): the same code as its
    `g0.` original, which is scanned, so it is not scanned again (a test suite has thousands)."""
    name = next((regocpp.node_value(c) for k, c in _named_children(function) if k == "rego-irstring"), "")
    return WITH_COPY.match(name) is not None


def plan_facts(bundle: int) -> PlanFacts:
    """Walk a built bundle (`regoBuild`): every plan and function in it."""
    facts = PlanFacts()

    def find(node: int) -> None:
        for kind, child in _named_children(node):
            if kind == "rego-function" and _is_with_copy(child):
                continue
            if kind in ("rego-function", "rego-plan"):
                _scan_function(child, facts)
            elif kind in ("rego-policy", "rego-planseq", "rego-functionseq"):
                find(child)

    find(regocpp.bundle_node(bundle))
    return facts


# --- sources --------------------------------------------------------------------------------


def find_call(modules: dict[str, str], name: str) -> str | None:
    """`file:line` of the first call of `name` (or of its last segments, for an imported package)."""
    parts = name.split(".")
    for start in range(len(parts)):
        candidate = re.compile(r"(?<![\w.])" + re.escape(".".join(parts[start:])) + r"\s*\(")
        for module, source in modules.items():
            match = candidate.search(code_only(source))
            if match:
                return f"{module}:{line_of(source, match.start())}"
    return None


def find_rule(modules: dict[str, str], rule: str) -> str | None:
    """`file:line` of the first definition of `data.<package>.<name>`."""
    package, _, name = rule.removeprefix("data.").rpartition(".")
    head = re.compile(r"^(?:default\s+)?" + re.escape(name) + r"\b", re.MULTILINE)
    for module, source in modules.items():
        if re.search(r"^\s*package\s+" + re.escape(package) + r"\s*$", code_only(source), re.MULTILINE):
            match = head.search(code_only(source))
            if match:
                return f"{module}:{line_of(source, match.start())}"
    return None


def _rule_name(function: str) -> str:
    """rego-cpp's function name (`g0.data.chit.decision`, `g0.data.chit.f$1`) as the rule it compiles."""
    return OWN_FUNCTION.sub("", function).split("$", 1)[0]


def source_problems(modules: dict[str, str], tests: frozenset[str] = frozenset()) -> list[str]:
    """`with` (except in `tests`, which `chit policy test` rewrites: chit.policy.suite) and
    `sprintf` with `%q`, found in the sources."""
    problems = []
    for module, source in modules.items():
        code = code_only(source)
        for match in re.finditer(r"\bwith\b", "" if module in tests else code):
            problems.append(
                f"{module}:{line_of(source, match.start())}: `with` is not supported by the embedded engine outside "
                "tests (rego-cpp 1.5 crashes on `with input as …` and misreads `with … as <a rule>`); use engine: opa"
            )
        for match in re.finditer(r'\bsprintf\s*\(\s*"((?:[^"\\\n]|\\.)*)"', source):
            if "%q" in match.group(1) and code[match.start()] != " ":
                problems.append(f"{module}:{line_of(source, match.start())}: sprintf's %q is printed literally by the embedded engine (OPA quotes the string); use %s, or engine: opa")
    return problems


def data_problems(data: Any, where: str = "data") -> list[str]:
    found = regocpp.find_unfaithful(data, where)
    return [] if found is None else [f"{found}: quote, backslash and control characters cannot be used in policy data with the embedded engine"]


def check(interpreter: int, bundle: int, modules: dict[str, str], data: Any, *, tests: frozenset[str] = frozenset()) -> None:
    """Raise DialectError listing every problem found (one per line, `file:line: …`)."""
    facts = plan_facts(bundle)
    problems = source_problems(modules, tests)
    policy = {name: source for name, source in modules.items() if name not in tests}
    for call in sorted(facts.calls):
        if OWN_FUNCTION.match(call):
            continue  # a function (or rule) the policy defines
        where = find_call(modules, call) or "policy"
        if call in UNFAITHFUL_BUILTINS:
            if tests and find_call(policy, call) is None:
                continue  # only tests call it: they run on OPA too (docs/policy/engines.md)
            problems.append(f"{where}: in the embedded engine, {call} {UNFAITHFUL_BUILTINS[call]}; use engine: opa")
        elif not regocpp.is_available_builtin(interpreter, call):
            problems.append(
                f"{where}: {call} is not a function the policy defines or the embedded engine implements "
                "(rego-cpp 1.5 declares some OPA built-ins without implementing them); use engine: opa"
            )
    for function in facts.unbound_readers:
        rule = _rule_name(function)
        where = find_rule(modules, rule) or "policy"
        problems.append(
            f"{where}: {rule} reads a variable that is never bound (a misspelled name? OPA refuses it as "
            "\"var … is unsafe\"; the embedded engine would read it as undefined)"
        )
    problems += data_problems(data)
    if problems:
        raise DialectError("\n".join(dict.fromkeys(problems)))
