"""The production image, checked by parsing the Dockerfile (no container engine
runs on the development machines)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from dockerfile_parse import DockerfileParser

from tests.factories import ROOT, ChitServer, free_port


@pytest.fixture(scope="module")
def stages() -> list[list[dict]]:
    """Instructions per build stage, comments left out."""
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    result: list[list[dict]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            result.append([])
        if instruction["instruction"] != "COMMENT":
            result[-1].append(instruction)
    return result


def values(stage: list[dict], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def test_multi_stage_on_a_pinned_slim_python(stages) -> None:
    assert len(stages) >= 2
    for stage in stages:
        image = values(stage, "FROM")[0].split()[0]
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image


def pip_installs(stage: list[dict]) -> list[str]:
    """Each `pip install` of the stage's RUN instructions, one string each."""
    commands = " && ".join(values(stage, "RUN")).split("&&")
    return [" ".join(command.split()) for command in commands if "pip install " in command]


def test_dependencies_are_installed_exactly_as_locked_and_hash_checked(stages) -> None:
    """docs/operators/supply-chain.md: every third-party file in the image is one the lock
    names by hash; nothing is resolved or built from source; chit goes in without dependencies."""
    installs = pip_installs(stages[0])
    locked = [command for command in installs if " -r requirements/" in command]
    assert {command.split(" -r ")[1] for command in locked} == {"requirements/server.lock", "requirements/agent.lock"}
    for command in locked:
        assert "--require-hashes" in command and "--no-deps" in command and "--only-binary=:all:" in command, command
    (chit_install,) = [command for command in installs if " -r " not in command]
    assert "--no-deps" in chit_install and "chit-*.whl" in chit_install
    build = " ".join(values(stages[0], "RUN"))
    assert "pip wheel --no-cache-dir --no-deps --no-build-isolation" in build  # the locked backend, not a fetched one
    copies = values(stages[0], "COPY")
    assert copies.index("requirements ./requirements") < copies.index("pyproject.toml README.md ./")
    assert "requirements" not in (ROOT / ".dockerignore").read_text().split()


def test_final_stage_has_no_compilers_package_managers_or_caches(stages) -> None:
    final = stages[-1]
    assert values(final, "RUN") == []  # nothing is installed or built in the final stage
    copies = values(final, "COPY")
    assert copies and all(c.startswith("--from=") for c in copies)
    text = json.dumps(final)
    for word in ("gcc", "build-essential", "apt-get", "pip install"):
        assert word not in text


def test_runs_as_a_numeric_non_root_user(stages) -> None:
    user = values(stages[-1], "USER")
    assert len(user) == 1
    uid, _, gid = user[0].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)


def test_writes_only_to_declared_volumes(stages) -> None:
    volumes = json.loads(values(stages[-1], "VOLUME")[0])
    assert {"/tmp", "/var/lib/chit/keys", "/etc/chit", "/etc/chit-tls"} <= set(volumes)
    env = " ".join(values(stages[-1], "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # no .pyc written next to the code


def test_healthcheck_and_entrypoint(stages) -> None:
    final = stages[-1]
    assert "https://127.0.0.1:8443/healthz" in values(final, "HEALTHCHECK")[0]
    assert json.loads(values(final, "ENTRYPOINT")[0]) == ["chit", "serve"]
    assert json.loads(values(final, "CMD")[0]) == ["--config", "/etc/chit/chit.yaml"]
    assert values(final, "EXPOSE") == ["8443"]


def test_healthcheck_passes_against_chit_over_https_and_fails_without_it(stages, tls_chit: ChitServer) -> None:
    healthcheck = values(stages[-1], "HEALTHCHECK")[0]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3:])
    assert command[0] == "python"

    def run(port: int) -> int:
        probe = [sys.executable, *[part.replace("127.0.0.1:8443", f"127.0.0.1:{port}") for part in command[1:]]]
        return subprocess.run(probe, capture_output=True, timeout=30).returncode

    assert run(tls_chit.port) == 0
    assert run(free_port()) != 0


def test_build_context_leaves_out_local_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".chit", "tests"):
        assert entry in ignored
