"""Rego source as chit's policy tooling reads it: packages, imports, rules, bodies, expressions.

A scanner, not a parser. The engines parse and compile; the tooling only needs
to find things in the text, by their offsets, so that it can point at a line
(`file:line`), copy a rule body next to its original (coverage, failure
details) or rewrite a `with` the embedded engine cannot run as written
(`chit.policy.suite`). It reads Rego v1 syntax (OPA 1.x, or `import rego.v1`):
a body follows `if`, either in braces or as one expression. A rule it cannot
read (a v0 body without `if`) is kept as a rule without body: never measured,
never rewritten.

Every offset indexes the module's original text; `code_only` blanks the
insides of strings and comments first (same length, same lines), so that
brackets and keywords inside them never count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

_STRING_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`|#[^\n]*')
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A rule head's reference: `name`, `name.field`, `name[key]` (Rego v1 ref heads).
_HEAD_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[[^\]\n]*\])*")
_OPEN, _CLOSE = "{[(", "}])"


def _blank(match: re.Match[str]) -> str:
    text = match.group()
    if text[0] == "#":
        return " " * len(text)
    return text[0] + re.sub(r"[^\n]", " ", text[1:-1]) + text[-1]


def code_only(source: str) -> str:
    """The source with the insides of string literals and comments blanked (same offsets, same lines)."""
    return _STRING_OR_COMMENT.sub(_blank, source)


def line_of(source: str, offset: int) -> int:
    return source.count("\n", 0, offset) + 1


def is_keyword_at(code: str, offset: int, word: str) -> bool:
    """`word` as a whole token at `offset` (not part of a longer name, nor a field `.word`)."""
    if not code.startswith(word, offset):
        return False
    before = code[offset - 1] if offset > 0 else " "
    after = code[offset + len(word)] if offset + len(word) < len(code) else " "
    return not (before.isalnum() or before in "_.") and not (after.isalnum() or after == "_")


def top_level(code: str, start: int, end: int) -> Iterator[tuple[int, str]]:
    """(offset, character) of `code[start:end]` outside any bracket opened in that span."""
    depth = 0
    for offset in range(start, end):
        character = code[offset]
        if character in _OPEN:
            depth += 1
        elif character in _CLOSE:
            depth -= 1
        elif depth == 0:
            yield offset, character


def find_keyword(code: str, word: str, start: int, end: int) -> int | None:
    """The first top-level `word` token in `code[start:end]`."""
    for offset, character in top_level(code, start, end):
        if character == word[0] and is_keyword_at(code, offset, word):
            return offset
    return None


def matching_close(code: str, open_offset: int) -> int:
    """The offset of the bracket closing the one at `open_offset` (len(code) if none)."""
    depth = 0
    for offset in range(open_offset, len(code)):
        if code[offset] in _OPEN:
            depth += 1
        elif code[offset] in _CLOSE:
            depth -= 1
            if depth == 0:
                return offset
    return len(code)


def _line_end(code: str, start: int) -> int:
    """The end of the logical line from `start`: the first newline outside brackets."""
    for offset, character in top_level(code, start, len(code)):
        if character == "\n":
            return offset
    return len(code)


def _skip_blank(code: str, offset: int) -> int:
    while offset < len(code) and code[offset].isspace():
        offset += 1
    return offset


@dataclass(frozen=True, slots=True)
class WithModifier:
    """`with TARGET as VALUE`, by offsets into the module source."""

    target: str
    value_start: int
    value_end: int
    value: str


@dataclass(frozen=True, slots=True)
class Expression:
    """One expression of a body (a line, or a `;`-separated part of one)."""

    start: int
    end: int
    text: str
    line: int
    base: str  # the text without its `with` modifiers
    modifiers: tuple[WithModifier, ...]

    @property
    def with_text(self) -> str:
        """The modifiers as written (` with a as b with c as d`), to repeat them elsewhere."""
        return "".join(f" with {m.target} as {m.value}" for m in self.modifiers)


@dataclass(frozen=True, slots=True)
class Body:
    """A rule body, or an `else` branch: `head_start` is the rule head's or the `else`'s offset.
    A branch without a condition (`else := x`, a rule without body) has no expressions."""

    head_start: int
    start: int
    end: int
    expressions: tuple[Expression, ...]
    first_line: int
    last_line: int
    conditional: bool  # False: `else := x` without `if`


@dataclass(frozen=True, slots=True)
class Rule:
    name: str  # the first segment of the head's reference
    start: int
    end: int
    line: int
    function: bool
    default: bool
    branches: tuple[Body, ...]  # the body and its `else` branches, in order; () for a constant

    def lines(self) -> range:
        return range(self.line, (self.branches[-1].last_line if self.branches else self.line) + 1)


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    source: str
    package: str | None
    imports: dict[str, str]  # alias -> imported reference (`data.lib.x`, `input.y`)
    rules: tuple[Rule, ...]

    def line(self, offset: int) -> int:
        return line_of(self.source, offset)


def _expressions(source: str, code: str, start: int, end: int) -> tuple[Expression, ...]:
    """The expressions of `code[start:end]`, split at newlines and `;` outside brackets; a
    line starting with `with` continues the expression before it."""
    spans: list[list[int]] = []
    begin = start
    for offset, character in [*top_level(code, start, end), (end, "\n")]:
        if character not in "\n;":
            continue
        text = code[begin:offset]
        if text.strip():
            left = begin + len(text) - len(text.lstrip())
            right = offset - (len(text) - len(text.rstrip()))
            if spans and is_keyword_at(code, left, "with"):
                spans[-1][1] = right
            else:
                spans.append([left, right])
        begin = offset + 1
    return tuple(_expression(source, code, left, right) for left, right in spans)


def _expression(source: str, code: str, start: int, end: int) -> Expression:
    modifiers = []
    first_with = find_keyword(code, "with", start, end)
    cursor = first_with
    while cursor is not None:
        target_start = _skip_blank(code, cursor + 4)
        as_offset = find_keyword(code, "as", target_start, end)
        if as_offset is None:
            break
        value_start = _skip_blank(code, as_offset + 2)
        following = find_keyword(code, "with", value_start, end)
        value_end = following if following is not None else end
        while value_end > value_start and code[value_end - 1].isspace():
            value_end -= 1
        target = " ".join(source[target_start:as_offset].split())
        modifiers.append(WithModifier(target, value_start, value_end, source[value_start:value_end]))
        cursor = following
    base_end = first_with if first_with is not None and modifiers else end
    return Expression(
        start, end, source[start:end], line_of(source, start), source[start:base_end].rstrip(), tuple(modifiers)
    )


def _body(source: str, code: str, head_start: int, if_offset: int) -> tuple[Body, int]:
    """The body after the `if` at `if_offset`; returns it and the offset after it."""
    start = _skip_blank(code, if_offset + 2)
    if start < len(code) and code[start] == "{":
        close = matching_close(code, start)
        expressions = _expressions(source, code, start + 1, close)
        body = Body(head_start, start + 1, close, expressions, line_of(source, head_start), line_of(source, close), True)
        return body, close + 1
    end = _line_end(code, start)
    body = Body(head_start, start, end, _expressions(source, code, start, end), line_of(source, head_start), line_of(source, end), True)
    return body, end


def _rule(source: str, code: str, start: int) -> tuple[Rule, int]:
    cursor = start
    default = is_keyword_at(code, cursor, "default")
    if default:
        cursor = _skip_blank(code, cursor + len("default"))
    head = _HEAD_REF.match(code, cursor)
    name = head.group().split(".")[0].split("[")[0] if head else ""
    after_name = head.end() if head else cursor
    function = after_name < len(code) and code[after_name] == "("
    line_end = _line_end(code, start)
    if_offset = None if default else find_keyword(code, "if", after_name, line_end)
    branches: list[Body] = []
    end = line_end
    if if_offset is not None:
        body, end = _body(source, code, start, if_offset)
        branches.append(body)
        while True:
            following = _skip_blank(code, end)
            if not is_keyword_at(code, following, "else"):
                break
            branch_end = _line_end(code, following)
            else_if = find_keyword(code, "if", following + 4, branch_end)
            if else_if is None:
                line = line_of(source, following)
                branches.append(Body(following, branch_end, branch_end, (), line, line_of(source, branch_end), False))
                end = branch_end
                break
            body, end = _body(source, code, following, else_if)
            branches.append(body)
    rule = Rule(name, start, end, line_of(source, start), function, default, tuple(branches))
    return rule, end


def read_module(name: str, source: str) -> Module:
    """Scan one module: its package, its imports, and its rules in file order."""
    code = code_only(source)
    package: str | None = None
    imports: dict[str, str] = {}
    rules: list[Rule] = []
    cursor = _skip_blank(code, 0)
    while cursor < len(code):
        end = _line_end(code, cursor)
        if is_keyword_at(code, cursor, "package"):
            package = code[cursor + len("package") : end].strip() or None
        elif is_keyword_at(code, cursor, "import"):
            words = code[cursor + len("import") : end].split()
            if words:
                alias = words[2] if len(words) >= 3 and words[1] == "as" else re.split(r"[.\[]", words[0])[-1]
                imports[alias] = words[0]
        elif _IDENTIFIER.match(code, cursor):
            rule, end = _rule(source, code, cursor)
            rules.append(rule)
        cursor = _skip_blank(code, max(end, cursor + 1))
    return Module(name, source, package, imports, tuple(rules))


def read_modules(modules: dict[str, str]) -> dict[str, Module]:
    return {name: read_module(name, source) for name, source in modules.items()}


# --- references between rules ---------------------------------------------------------------

_DATA_REF = re.compile(r"(?<![\w.])data((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_NAME = re.compile(r"(?<![\w.])[A-Za-z_][A-Za-z0-9_]*")


def referenced_rules(text: str, module: Module, rules_by_package: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(package, rule) pairs `text` (code of `module`) may refer to: `data.pkg.rule`, a
    rule of the module's own package by name, or one reached through an import. A
    reference to a whole package (`data.pkg`) refers to every rule of it. Textual, so
    it errs on the side of more: a name shadowed by a local variable still counts."""
    found: set[tuple[str, str]] = set()

    def resolve(path: str) -> None:
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):
            package = ".".join(parts[:cut])
            if package in rules_by_package:
                if cut < len(parts):
                    if parts[cut] in rules_by_package[package]:
                        found.add((package, parts[cut]))
                else:
                    found.update((package, rule) for rule in rules_by_package[package])
                return

    for match in _DATA_REF.finditer(text):
        resolve(match.group(1)[1:])
    own = rules_by_package.get(module.package or "", set())
    for match in _NAME.finditer(text):
        word = match.group()
        if word in own:
            found.add((module.package or "", word))
        imported = module.imports.get(word)
        if imported is not None and imported.startswith("data."):
            following = re.match(r"(?:\.[A-Za-z_][A-Za-z0-9_]*)*", text[match.end() :])
            resolve(imported.removeprefix("data.") + (following.group() if following else ""))
    return found
