"""`pip install chit` is the agent alone: no dependency, no server code, and it works.

The wheel is built from this checkout and installed into a fresh virtualenv
without any index, so a dependency it needed could not be found: the install
succeeding proves it declares none. The agent there then exchanges a token
with a real chit server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

import chit
from tests.factories import ROOT, ChitServer, ClusterIssuer


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (built,) = out.glob("chit-*.whl")
    return built


@pytest.fixture(scope="module")
def agent_env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("agent-venv")
    venv.create(directory, with_pip=True)
    subprocess.run([str(directory / "bin" / "pip"), "install", "--quiet", "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    yield directory


def run(env: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(env / "bin" / "chit"), *args], capture_output=True, text=True, timeout=60, cwd=cwd or env,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(env)})


def test_the_agent_install_is_one_package(agent_env: Path) -> None:
    listed = subprocess.run([str(agent_env / "bin" / "pip"), "list", "--format", "json"], capture_output=True, text=True, check=True)
    packages = {p["name"].lower() for p in json.loads(listed.stdout)} - {"pip", "setuptools"}
    assert packages == {"chit"}


def test_the_agent_commands_run_and_the_server_says_how_to_install_it(agent_env: Path) -> None:
    assert run(agent_env, "--version").stdout.strip() == f"chit {chit.__version__}"
    assert run(agent_env, "exchange", "--help").returncode == 0
    assert run(agent_env, "agent", "--help").returncode == 0
    for command in (["serve", "--dev"], ["keys", "list"], ["policy", "test"]):
        result = run(agent_env, *command)
        assert result.returncode == 2, result.stderr
        assert "pip install 'chit[server]'" in result.stderr and "Traceback" not in result.stderr


def test_the_agent_imports_only_the_standard_library(agent_env: Path) -> None:
    code = (
        "import sys, chit.cli, chit.agent.cli, chit.agent.sidecar, chit.agent.providers\n"
        "import chit.attestors.kubernetes.collector, chit.attestors.aws_iid.collector, chit.attestors.gcp.collector\n"
        # __main__ is this script, _distutils_hack the .pth hook setuptools puts in every virtualenv.
        "third = sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'chit', '__main__', '_distutils_hack'})\n"
        "server = sorted(m for m in sys.modules if m.startswith(('chit.server', 'chit.policy', 'chit.state')))\n"
        "print(third, server)\n"
    )
    result = subprocess.run([str(agent_env / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[] []", result.stdout


def test_the_agent_alone_exchanges_with_chit(agent_env: Path, chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(prod_issuer.token())
    result = run(agent_env, "exchange", "--server", chit.url, "--subject-token-file", str(token_file), "--audience", "https://db.internal")
    assert result.returncode == 0, result.stderr
    chit.verify_issued(result.stdout.strip(), "https://db.internal")


def test_the_wheel_carries_the_shipped_policy_and_aws_certificates(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "chit/policies/chit/decision.rego" in names and "chit/policies/data.json" in names
    assert "chit/attestors/aws_iid/certificates/signature/us-east-1.pem" in names
    assert not any(name.startswith(("tests/", "server/", "client/", "attestors/")) for name in names)
