"""A policy directory in OPA's bundle layout: Rego modules plus JSON data.

Every `*.rego` file is a module; every `*.json` file is data at the path of
its directory (`policies/data.json` is the data root, `policies/chit/x/data.json`
is `data.chit.x`), exactly as OPA loads a directory. More directories
(`policy.extra_dirs`) add their modules and data to the first one, as
`opa run --server DIR DIR…` does.

Data files merge as OPA's loader merges them (internal/merge of OPA): objects
merge key by key, at any depth; any other value defined twice is a conflict,
and refuses the policy naming the key and both files. So a second file can add
bindings beside the shipped ones, but never change one.

Loading refuses an empty directory, a directory without a `decision` rule in
package `chit`, and conflicting data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import chit
from chit.strictjson import strict_json

ENTRYPOINT = "chit/decision"
QUERY = "data.chit.decision"

_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_DECISION_RULE = re.compile(r"^\s*(default\s+)?decision\b", re.MULTILINE)
_COMMENT = re.compile(r"#[^\n]*")


class PolicyLoadError(Exception):
    """The policy cannot be used; the message names the file (and line when known)."""


@dataclass(frozen=True)
class PolicyBundle:
    root: Path  # the first directory; messages name modules relative to it
    modules: dict[str, str]  # module id (path relative to root, or the path of an extra dir's file) -> source
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


def merge_data(data: dict[str, Any], path: tuple[str, ...], document: Any, source: Path, origins: dict[tuple[str, ...], Path]) -> None:
    """Place `document` at `path` in `data`, merging objects key by key (OPA's loader);
    a value that is not an object, defined twice, refuses the policy. `origins` remembers
    which file wrote each value, to name both files of a conflict."""
    if not path:
        if not isinstance(document, dict):
            raise PolicyLoadError(f"{source}: data at the root of a policy directory must be an object")
        for key, value in document.items():
            merge_data(data, (key,), value, source, origins)
        return
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise PolicyLoadError(f"{source}: data {where} is already defined by {origins[path[: depth + 1]]}")
        node = child
    key = path[-1]
    if key not in node:
        node[key] = document
        origins[path] = source
        _remember(origins, path, document, source)
        return
    if isinstance(node[key], dict) and isinstance(document, dict):
        for name, value in document.items():
            merge_data(data, (*path, name), value, source, origins)
        return
    raise PolicyLoadError(
        f"{source}: data {'.'.join(path)} is already defined by {origins.get(path, 'another data file')} "
        "(data files may add keys to each other's objects, never change a value)"
    )


def _remember(origins: dict[tuple[str, ...], Path], path: tuple[str, ...], document: Any, source: Path) -> None:
    if isinstance(document, dict):
        for name, value in document.items():
            origins[(*path, name)] = source
            _remember(origins, (*path, name), value, source)


def _read(root: Path, modules: dict[str, str], data: dict[str, Any], origins: dict[tuple[str, ...], Path], *, include_tests: bool, first: bool) -> None:
    if not root.is_dir():
        raise PolicyLoadError(f"{root}: policy directory not found")
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        relative = path.relative_to(root).as_posix()
        if path.suffix == ".rego":
            if not include_tests and path.name.endswith("_test.rego"):
                continue
            try:
                modules[relative if first else str(path)] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise PolicyLoadError(f"{path}: cannot read: {error}") from None
        elif path.suffix == ".json":
            try:
                document = strict_json(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
                raise PolicyLoadError(f"{path}: not valid JSON data: {error}") from None
            merge_data(data, path.parent.relative_to(root).parts, document, path, origins)


def load_policy_dir(root: Path, *, require_decision: bool = True, include_tests: bool = True, extra_dirs: Sequence[Path] = ()) -> PolicyBundle:
    """The policy in `root`, with the modules and data of `extra_dirs` added."""
    root = Path(root)
    modules: dict[str, str] = {}
    data: dict[str, Any] = {}
    origins: dict[tuple[str, ...], Path] = {}
    for index, directory in enumerate([root, *map(Path, extra_dirs)]):
        _read(directory, modules, data, origins, include_tests=include_tests, first=index == 0)
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


def line_and_column(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def format_compile_error(raw: str, modules: dict[str, str], locate: Callable[[str, int], str | None] | None = None) -> str:
    """Turn rego-cpp's error tree into `file:line:col: message` lines. `locate(module,
    offset)` names the place of an offset in a module chit rewrote before compiling."""
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
            place = locate(location, int(offset.group(1))) if locate else None
            if place is None:
                line, column = line_and_column(modules[location], int(offset.group(1)))
                place = f"{location}:{line}:{column}"
            lines.append(f"{place}: {message}")
        else:
            lines.append(f"{location or 'policy'}: {message}")
    return "\n".join(lines) or raw.strip()
