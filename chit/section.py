"""A section of chit's YAML configuration: strict, frozen, paths relative to the file.

Every part of chit that is configured owns its section and validates it (an
attestor its `attestors.<kind>` block, the state store `state`, …);
`chit.server.config` only composes them. A wrong type, an unknown key or an
unsafe value stops the start with a message naming the key and the file.
A `FilePath` is relative to the configuration file it is written in (the
file's directory is passed as the validation context `base`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo


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
