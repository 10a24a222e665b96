"""A section of chit's YAML configuration: strict, frozen, paths relative to the file.

Every part of chit that is configured owns its section and validates it (an
attestor its `attestors.<kind>` block, the state store `state`, …);
`chit.server.config` only composes them. A wrong type, an unknown key or an
unsafe value stops the start with a message naming the key and the file.
A `FilePath` is relative to the configuration file it is written in (the
file's directory is passed as the validation context `base`).

`read_yaml_file` and `validate_section` read and check a whole file (the token
server's, the gateway's): a key given twice is refused, as YAML would let the
second silently win.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Mapping, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo


class Section(BaseModel):
    # Defaults are validated too, and nested sections again with the file's context:
    # a default path (`signing.keys_dir: var/keys`) is relative to the file as well.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True, revalidate_instances="always")


def _relative_to_the_file(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base")
    return value if base is None or value.is_absolute() else Path(base) / value


# Paths are strings in YAML (strict mode would only take Path objects).
FilePath = Annotated[Path, Field(strict=False), AfterValidator(_relative_to_the_file)]
PositiveInt = Annotated[int, Field(gt=0)]
# A time budget for one call to a dependency: more than a minute is a misconfiguration.
Milliseconds = Annotated[int, Field(gt=0, le=60_000)]

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError("must be a DNS label (lowercase letters, digits, '-'; at most 63)")
    return value


# A name that becomes a path segment of SPIFFE IDs (a cluster's, an OIDC issuer's).
DnsLabel = Annotated[str, AfterValidator(_dns_label)]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


SectionType = TypeVar("SectionType", bound=Section)


def _format_location(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def validate_section(model: type[SectionType], document: Any, source: str, base: Path) -> SectionType:
    """A whole configuration file's mapping as `model`; `source` names it in errors, `base`
    anchors relative paths. ConfigError lists every bad key."""
    if not isinstance(document, Mapping):
        raise ConfigError(f"{source}: the configuration must be a YAML mapping")
    try:
        # Relative paths are relative to the file, not to the working directory.
        return model.model_validate(dict(document), context={"base": base})
    except ValidationError as error:
        lines = [f"{source}: invalid configuration:"]
        for problem in error.errors():
            key = _format_location(problem["loc"])
            message = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {message}")
        raise ConfigError("\n".join(lines)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice (the second would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_file(path: Path) -> Any:
    """The YAML document of a configuration file (an empty file is an empty mapping)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration: {error.strerror}") from None
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return {} if document is None else document
