"""Why a Rego test failed: its first expression that does not hold, and the values involved.

rego-cpp has no trace, so chit asks it again, once for all failing tests, with
probe rules appended to each test's module. For a test whose body is e1 … en:

    __chit_p_test_x_3 if { e1; e2; e3 }                          # do e1 … e3 hold?
    __chit_v_test_x_3_0 := [v] if { e1; e2; v := <operand> <with …> }  # an operand of e3

The first prefix that does not hold names the failing expression; the values
of its operands are read with the bindings and `with` modifiers the test gave
them (`[v]`, so that `null` is told from undefined). Operands are the two sides
of a comparison, the term under `not`, or the expression itself; literals are
left out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from chit.policy.source import Expression, Module, Rule, code_only, top_level

_COMPARISONS = ("==", "!=", "<=", ">=", ":=", "<", ">", "=")
_LITERAL = re.compile(r'\s*(?:-?\d[\d.eE+-]*|true|false|null|"(?:[^"\\]|\\.)*"|`[^`]*`)\s*')
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_VALUE = 300


@dataclass(frozen=True, slots=True)
class Probe:
    """The probes of one failing test."""

    rule: str  # data.pkg.test_x
    module: str
    line: int
    prefixes: tuple[str, ...]  # entrypoint of prefix k (k = 0 … n-1)
    operands: tuple[tuple[tuple[str, str], ...], ...]  # per expression: (operand text, entrypoint)
    expressions: tuple[Expression, ...]


def operands(expression: Expression) -> list[str]:
    """The terms of an expression worth showing the value of."""
    base = expression.base.strip()
    code = code_only(base)
    if re.match(r"(some|every)\b", code):
        return []
    if re.match(r"not\b", code):
        base, code = base[3:].strip(), code[3:].strip()
    for operator in _COMPARISONS:
        for offset, _ in top_level(code, 0, len(code)):
            if code.startswith(operator, offset) and not _part_of_longer_operator(code, offset, operator):
                sides = [base[:offset].strip(), base[offset + len(operator) :].strip()]
                if operator in (":=", "="):
                    # The left side of an assignment, a plain name in a unification: being bound, no value yet.
                    sides = sides[1:] if operator == ":=" else [s for s in sides if not _NAME.fullmatch(s)]
                return [side for side in sides if side and not _is_literal(side)]
    return [] if _is_literal(base) else [base]


def _part_of_longer_operator(code: str, offset: int, operator: str) -> bool:
    before = code[offset - 1] if offset else ""
    after = code[offset + len(operator)] if offset + len(operator) < len(code) else ""
    if operator in ("<", ">", "=") and after == "=":
        return True
    if operator == "=" and before in "=!<>:":
        return True
    return False


def _is_literal(text: str) -> bool:
    if _LITERAL.fullmatch(text):
        return True
    code = code_only(text)
    # A composite of literals only: no name outside strings.
    return code[:1] in "[{" and re.search(r"[A-Za-z_]", re.sub(r"\b(true|false|null)\b", "", code)) is None


def probes_for(test: Rule, module: Module) -> tuple[str, Probe] | None:
    """The probe rules of one test (text to append to its module) and how to read them."""
    if not test.branches or module.package is None or not test.branches[0].expressions:
        return None
    expressions = test.branches[0].expressions
    base = f"{module.package.replace('.', '/')}/"
    texts, prefixes, operand_entries = [], [], []
    for index, expression in enumerate(expressions):
        name = f"__chit_p_{test.name}_{index}"
        texts.append(f"{name} if {{\n" + "\n".join(f"\t{e.text}" for e in expressions[: index + 1]) + "\n}")
        prefixes.append(base + name)
        entries = []
        for number, operand in enumerate(operands(expression)):
            value_name = f"__chit_v_{test.name}_{index}_{number}"
            prefix = "\n".join(f"\t{e.text}" for e in expressions[:index])
            texts.append(f"{value_name} := [__chit_value] if {{\n{prefix}\n\t__chit_value := {operand}{expression.with_text}\n}}")
            entries.append((operand, base + value_name))
        operand_entries.append(tuple(entries))
    probe = Probe(f"data.{module.package}.{test.name}", module.name, test.line, tuple(prefixes), tuple(operand_entries), expressions)
    return "\n\n# chit: failure probes\n\n" + "\n\n".join(texts) + "\n", probe


def shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(", ", ": "), ensure_ascii=False)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


__all__ = ["Probe", "operands", "probes_for", "shown"]
