"""Compiled plans kept between runs of `chit policy test`, so that only what changed compiles.

rego-cpp compiles a group of tests in hundreds of milliseconds and loads the
same plan, saved in its binary bundle format (Rego Bundle Binary), in tens. A
plan is saved under the SHA-256 of everything it was compiled from (rego-cpp's
version, the modules as compiled, the data, the entrypoints), so a plan is
only ever reused for exactly the same inputs, and only after it passed the
checks a fresh compile passes (chit.policy.dialect): editing one test file
recompiles its group, editing the policy recompiles every group.

The directory is the user's (created 0700); one that another user could write
to is not used, since a plan is code the engine runs. Files are written whole
(a temporary file, then a rename); a file that is not a whole bundle is not
loaded (rego-cpp checks its header and length) and is compiled again; the
oldest are removed beyond `MAX_PLANS`. The server never uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import regopy
from regopy.interpreter import Bundle, BundleFormat

from chit.policy.regocpp import quiet_stdout

MAX_PLANS = 64


def default_directory(environ: Mapping[str, str]) -> Path | None:
    """`$XDG_CACHE_HOME/chit/plans`, else `~/.cache/chit/plans` (None without a home)."""
    base = environ.get("XDG_CACHE_HOME") or (str(Path(environ["HOME"]) / ".cache") if environ.get("HOME") else None)
    return Path(base) / "chit" / "plans" if base else None


@dataclass(frozen=True)
class PlanCache:
    directory: Path

    @staticmethod
    def key(modules: Mapping[str, str], data: Any, entrypoints: list[str]) -> str:
        document = json.dumps([regopy.build_info(), sorted(modules.items()), data, entrypoints], sort_keys=True)
        return hashlib.sha256(document.encode()).hexdigest()

    def _usable(self) -> bool:
        """The directory exists (or is created) as the user's own, writable by no one else."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.directory.stat()
        except OSError:
            return False
        return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)

    def load(self, interpreter: regopy.Interpreter, key: str) -> Bundle | None:
        path = self.directory / f"{key}.rbb"
        if not path.is_file() or not self._usable():
            return None
        try:
            with quiet_stdout():  # rego-cpp prints why a file is not a bundle
                bundle = interpreter.load_bundle(str(path), BundleFormat.Binary)
        except regopy.RegoError:
            return None
        if not bundle.ok():
            return None
        os.utime(path)  # recently used: kept longest
        return bundle

    def save(self, interpreter: regopy.Interpreter, bundle: Bundle, key: str) -> None:
        if not self._usable():
            return
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, suffix=".part")
        os.close(descriptor)
        try:
            interpreter.save_bundle(temporary, bundle, BundleFormat.Binary)
            os.replace(temporary, self.directory / f"{key}.rbb")
        except (regopy.RegoError, OSError):
            Path(temporary).unlink(missing_ok=True)
            return
        plans = sorted(self.directory.glob("*.rbb"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in plans[MAX_PLANS:]:
            old.unlink(missing_ok=True)
