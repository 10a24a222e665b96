"""A policy directory in OPA's bundle layout: Rego modules plus JSON data.

Every `*.rego` file is a module; every `*.json` file is data at the path of
its directory (`policies/data.json` is the data root, `policies/chit/x/data.json`
is `data.chit.x`), exactly as OPA loads a bundle. Loading refuses an empty
directory, a directory without a `decision` rule in package `chit`, and data
files that overlap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chit
from chit.strictjson import strict_json

ENTRYPOINT = "chit/decision"
QUERY = "data.chit.decision"

# rego-cpp 1.5 crashes the process on `with input as …` once the policy calls a
# function; such modules are refused (server) or their tests not run (`policy test`).
WITH_WHOLE_INPUT = re.compile(r"\bwith\s+input\s+as\b")
_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_DECISION_RULE = re.compile(r"^\s*(default\s+)?decision\b", re.MULTILINE)
_COMMENT = re.compile(r"#[^\n]*")


class PolicyLoadError(Exception):
    """The policy cannot be used; the message names the file (and line when known)."""


@dataclass(frozen=True)
class PolicyBundle:
    root: Path
    modules: dict[str, str]  # path relative to root -> Rego source
    data: dict[str, Any]

    def module_package(self, name: str) -> str | None:
        return module_package(self.modules[name])


def module_package(source: str) -> str | None:
    """The package a Rego module declares (None if it declares none)."""
    match = _PACKAGE.search(_COMMENT.sub("", source))
    return match.group(1) if match else None


def shipped_policy_dir() -> Path:
    """The policies that come with chit: inside the wheel, or ./policies of a checkout."""
    package_dir = Path(chit.__file__).resolve().parent
    for candidate in (package_dir / "policies", package_dir.parent / "policies"):
        if candidate.is_dir():
            return candidate
    raise PolicyLoadError("the shipped policies are missing from this installation")


def _merge(data: dict[str, Any], path: tuple[str, ...], document: Any, source: Path) -> None:
    """Place `document` at `path` in `data`; refuse to overwrite anything already there."""
    where = ".".join(path) or "the data root"
    node: Any = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PolicyLoadError(f"{source}: data at {where} overlaps another data file")
    if path and path[-1] not in node:
        node[path[-1]] = document
        return
    existing = node[path[-1]] if path else node
    if not isinstance(existing, dict) or not isinstance(document, dict):
        raise PolicyLoadError(f"{source}: data at {where} overlaps another data file (or is not an object)")
    for key, value in document.items():
        if key in existing:
            raise PolicyLoadError(f"{source}: data key {key!r} at {where} is defined twice")
        existing[key] = value


def uses_whole_input_override(source: str) -> bool:
    return bool(WITH_WHOLE_INPUT.search(_COMMENT.sub("", source)))


def load_policy_dir(root: Path, *, require_decision: bool = True, include_tests: bool = True) -> PolicyBundle:
    root = Path(root)
    if not root.is_dir():
        raise PolicyLoadError(f"{root}: policy directory not found")
    modules: dict[str, str] = {}
    data: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        relative = path.relative_to(root).as_posix()
        if path.suffix == ".rego":
            if not include_tests and path.name.endswith("_test.rego"):
                continue
            try:
                modules[relative] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise PolicyLoadError(f"{path}: cannot read: {error}") from None
        elif path.suffix == ".json":
            try:
                document = strict_json(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
                raise PolicyLoadError(f"{path}: not valid JSON data: {error}") from None
            _merge(data, path.parent.relative_to(root).parts, document, path)
    if not modules:
        raise PolicyLoadError(f"{root}: no Rego modules (*.rego) in the policy directory")
    bundle = PolicyBundle(root, modules, data)
    if require_decision and not any(
        bundle.module_package(name) == "chit" and _DECISION_RULE.search(_COMMENT.sub("", source))
        for name, source in modules.items()
    ):
        raise PolicyLoadError(f"{root}: no rule `decision` in package chit")
    return bundle


_ERROR = re.compile(r"\(error (\d+):")
_ERROR_MESSAGE = re.compile(r"\(errormsg (\d+):")


def _length_prefixed(text: str, start: int, length: int) -> str:
    return text[start : start + length]


def format_compile_error(raw: str, modules: dict[str, str]) -> str:
    """Turn rego-cpp's error tree into `file:line:col: message` lines."""
    lines = []
    for match in _ERROR.finditer(raw):
        location = _length_prefixed(raw, match.end(), int(match.group(1)))
        rest = raw[match.end() + int(match.group(1)) :]
        offset = re.match(r"\|(\d+)\|", rest)
        message_match = _ERROR_MESSAGE.search(rest)
        message = (
            _length_prefixed(rest, message_match.end(), int(message_match.group(1))) if message_match else "error"
        )
        if location in modules and offset:
            before = modules[location][: int(offset.group(1))]
            line = before.count("\n") + 1
            column = len(before) - (before.rfind("\n") + 1) + 1
            lines.append(f"{location}:{line}:{column}: {message}")
        else:
            lines.append(f"{location or 'policy'}: {message}")
    return "\n".join(lines) or raw.strip()
