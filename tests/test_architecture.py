"""The code's boundaries hold (issue 13): the import contracts of pyproject.toml, checked by
import-linter — the agent imports nothing of the server and no third-party package,
attestors never import the server, the policy package imports no attestor, the gateway
imports nothing of the token server, layers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.factories import ROOT


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout, result.stdout


def test_a_broken_contract_is_reported(tmp_path: Path) -> None:
    """The check can fail: a copy of the package whose agent imports the server breaks it."""
    import shutil

    shutil.copytree(ROOT / "chit", tmp_path / "chit", ignore=shutil.ignore_patterns("__pycache__", "policies"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "chit" / "agent" / "leak.py").write_text("from chit.server import config  # noqa: F401\n")
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "chit.agent is not allowed to import chit.server" in result.stdout, result.stdout
