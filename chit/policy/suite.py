"""A policy and its tests, as the embedded engine can run them: `with` made to work.

Every Rego test suite mocks its input and data with `with`. What rego-cpp 1.5
does with it inside a compiled plan (measured: tests/policy/test_suite.py):

| written | rego-cpp 1.5 | here |
|---|---|---|
| `with input.x as v`, `with data.x as v`, v a literal or a local | works | kept |
| `with input as v` | aborts the process while compiling, once the rules it reaches call any function (built-ins included) | rewritten |
| `with … as r`, r a rule, `data.…` or `input.…` | undefined (a crash for some data documents) | rewritten |
| `with f as …`, mocking a function or a built-in | undefined, or ignored | the test is not run, and reported |

The rewrites keep the meaning of the test exactly:

- `input` is moved one level down, for every module of the run: each
  reference `input…` becomes `input.__chit_input__…`, and `with input as v`
  becomes `with input.__chit_input__ as v`, which rego-cpp handles. Tests run
  without an input (as `opa test` runs them), so `input.__chit_input__` is
  undefined exactly where `input` would be.
- a value that is a reference is wrapped into `[r][0]`: the same value, or
  undefined where `r` is.

A test that mocks a function is set aside, never run with the mock ignored: its
rule is blanked out (same lines) and its result is an error naming the line.
A helper rule doing so sets aside every test that may reach it: all tests of
its package, and of any package referring to it, until nothing changes.

The rewritten modules keep every line where it was, so that line numbers in
messages hold; `locate` maps an offset back to the column as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from chit.policy.source import Module, Rule, code_only, line_of, matching_close, read_module

INPUT_ROOT = "__chit_input__"
_INPUT_TOKEN = re.compile(r"(?<![\w.$])input(?![\w])")
_WITH = re.compile(r"(?<![\w.])with(?![\w])")
_REFERENCE_START = re.compile(r"[A-Za-z_]")
_LITERAL_WORDS = frozenset({"true", "false", "null"})
# `with TARGET as`: the target may hold a blanked string (`input["a b"]`), never a newline.
_TARGET = re.compile(r"[ \t]+(\S[^\n]*?)[ \t]+as[ \t]+")


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace `start:end` by `text`: a blanked span, or an insertion (start == end; `order`
    sorts insertions at one offset)."""

    start: int
    end: int
    text: str
    order: int = 0


@dataclass(frozen=True)
class PreparedModules:
    """The modules to compile (rewritten), the originals, and what was set aside."""

    modules: dict[str, str]
    originals: dict[str, str]
    set_aside: dict[str, str]  # data.pkg.test_x -> why it is not run
    edits: dict[str, tuple[Edit, ...]]

    def original_offset(self, module: str, offset: int) -> int:
        """The offset in the original text of an offset in the rewritten one."""
        shift = 0
        for edit in self.edits.get(module, ()):
            new_start = edit.start + shift
            if offset < new_start:
                break
            if offset < new_start + len(edit.text):
                return edit.start
            shift += len(edit.text) - (edit.end - edit.start)
        return offset - shift

    def locate(self, module: str, offset: int) -> str | None:
        original = self.originals.get(module)
        if original is None:
            return None
        position = self.original_offset(module, offset)
        if position > len(original):
            return f"{module} (chit's instrumentation, after the last line)"
        before = original[:position]
        return f"{module}:{before.count(chr(10)) + 1}:{len(before) - (before.rfind(chr(10)) + 1) + 1}"


@dataclass(frozen=True, slots=True)
class _With:
    module: str
    start: int  # of `with`
    target: str
    value_start: int
    value_end: int
    value_is_reference: bool


def _term_end(code: str, start: int) -> int:
    """The end of a reference or call term starting at `start` (`a.b[c](d).e`)."""
    match = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(code, start)
    end = match.end() if match else start
    while end < len(code):
        if code[end] == "." and end + 1 < len(code) and _REFERENCE_START.match(code[end + 1]):
            end = re.compile(r"\.[A-Za-z_][A-Za-z0-9_]*").match(code, end).end()  # type: ignore[union-attr]
        elif code[end] in "[(":
            end = matching_close(code, end) + 1
        else:
            break
    return end


def find_withs(module: Module) -> list[_With]:
    """Every `with TARGET as VALUE` of the module, anywhere in it."""
    code = code_only(module.source)
    found = []
    for match in _WITH.finditer(code):
        as_match = _TARGET.match(code, match.end())
        if as_match is None:
            continue
        value_start = as_match.end()
        reference = bool(_REFERENCE_START.match(code, value_start))
        value_end = _term_end(code, value_start) if reference else value_start
        word = code[value_start:value_end]
        found.append(_With(module.name, match.start(), " ".join(as_match.group(1).split()), value_start, value_end, reference and word not in _LITERAL_WORDS))
    return found


def functions(modules: Iterable[Module]) -> set[str]:
    """`data.pkg.f` of every function the modules define."""
    return {f"data.{m.package}.{r.name}" for m in modules for r in m.rules if r.function and m.package}


def _mock_reason(target: str, module: Module, defined_functions: set[str]) -> str | None:
    """Why a `with` target cannot be honoured (a function or built-in mock), or None."""
    if target == "input" or target.startswith(("input.", "input[", "data.", "data[")):
        if target in defined_functions:
            return f"mocks the function {target}"
        return None
    alias = module.imports.get(target.split(".")[0])
    if alias is not None and alias.startswith(("data.", "input.")):
        full = alias + target[len(target.split(".")[0]) :]
        return f"mocks the function {full}" if full in defined_functions else None
    if f"data.{module.package}.{target}" in defined_functions:
        return f"mocks the function {target}"
    return f"mocks the function or built-in {target}"


def _rule_at(module: Module, offset: int) -> Rule | None:
    return next((r for r in module.rules if r.start <= offset <= r.end), None)


def _blank(source: str, start: int, end: int) -> str:
    return re.sub(r"[^\n]", " ", source[start:end])


def mentions_package(module: Module, package: str) -> bool:
    code = code_only(module.source)
    return module.package == package or re.search(r"(?<![\w.])data\." + re.escape(package) + r"(?![\w])", code) is not None


def prepare(modules: dict[str, str], tests: frozenset[str], *, move_input: bool = False, keep_input: frozenset[str] = frozenset()) -> PreparedModules:
    """The modules rewritten for rego-cpp (see the module's docstring). `tests` are the
    test modules: the only ones that may use `with` (the others are refused as the
    server refuses them, by chit.policy.dialect). `move_input` moves `input` down even
    without `with input as`, except in `keep_input` (chit.policy.coverage passes data
    through the input that way)."""
    read = {name: read_module(name, source) for name, source in modules.items()}
    defined_functions = functions(read.values())
    withs = [w for name in tests for w in find_withs(read[name])]
    edits: dict[str, list[Edit]] = {name: [] for name in modules}
    set_aside: dict[str, str] = {}
    blanked: dict[str, list[tuple[int, int]]] = {name: [] for name in modules}
    tainted_packages: dict[str, str] = {}

    for found in withs:
        module = read[found.module]
        reason = _mock_reason(found.target, module, defined_functions)
        if reason is None:
            continue
        rule = _rule_at(module, found.start)
        if rule is None:
            continue
        where = f"{module.name}:{line_of(module.source, found.start)}"
        message = f"not run: {where} {reason} (`with {found.target} as …`), which the embedded engine cannot do; run it on OPA (--engine opa)"
        if rule.name.startswith("test_") and module.package:
            set_aside.setdefault(f"data.{module.package}.{rule.name}", message)
            blanked[module.name].append((rule.start, rule.end))
        elif module.package:
            tainted_packages.setdefault(module.package, f"not run: it may use {module.package}.{rule.name}, and {message.removeprefix('not run: ')}")

    # A helper that cannot run taints every test that may reach it, transitively.
    changed = bool(tainted_packages)
    while changed:
        changed = False
        for module in (read[name] for name in tests):
            if module.package and module.package not in tainted_packages:
                reason = next((r for p, r in tainted_packages.items() if mentions_package(module, p)), None)
                if reason is not None:
                    tainted_packages[module.package] = reason
                    changed = True
    for name in tests:
        module = read[name]
        if module.package in tainted_packages:
            for rule in module.rules:
                if rule.name.startswith("test_"):
                    set_aside.setdefault(f"data.{module.package}.{rule.name}", tainted_packages[module.package])
            blanked[name] += [(rule.start, rule.end) for rule in module.rules]  # the package line stays: a module

    def inside_blank(name: str, offset: int) -> bool:
        return any(start <= offset < end for start, end in blanked[name])

    whole_input = [w for w in withs if w.target == "input" and not inside_blank(w.module, w.start)]
    for found in withs:
        if found.value_is_reference and not inside_blank(found.module, found.start):
            edits[found.module] += [Edit(found.value_start, found.value_start, "[", 0), Edit(found.value_end, found.value_end, "][0]", 2)]
    if whole_input or move_input:
        for name, module in read.items():
            if name in keep_input:
                continue
            for match in _INPUT_TOKEN.finditer(code_only(module.source)):
                edits[name].append(Edit(match.end(), match.end(), f".{INPUT_ROOT}", 1))

    rewritten: dict[str, str] = {}
    ordered: dict[str, tuple[Edit, ...]] = {}
    for name, source in modules.items():
        spans = [Edit(start, end, _blank(source, start, end)) for start, end in blanked[name]]
        insertions = [e for e in edits[name] if not any(b.start <= e.start <= b.end for b in spans)]
        ordered[name] = tuple(sorted(spans + insertions, key=lambda e: (e.start, e.order)))
        rewritten[name] = _apply(source, ordered[name])
    return PreparedModules(rewritten, dict(modules), set_aside, ordered)


def _apply(source: str, edits: tuple[Edit, ...]) -> str:
    parts, cursor = [], 0
    for edit in edits:
        parts.append(source[cursor : edit.start])
        parts.append(edit.text)
        cursor = edit.end
    parts.append(source[cursor:])
    return "".join(parts)


def is_test_module(name: str) -> bool:
    return name.endswith("_test.rego")


__all__ = ["INPUT_ROOT", "PreparedModules", "find_withs", "is_test_module", "mentions_package", "prepare"]
