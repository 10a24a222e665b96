"""The supply chain (docs/operators/supply-chain.md): pin, hash, audit.

- the lock files are complete and consistent with pyproject.toml: every declared
  dependency (the `server` and `tracing` extras for the image, the build backend for the agent
  install) is locked at a version its range admits, each entry pinned with `==`
  and at least one sha256 hash, and the dependencies of every locked package (as
  its metadata declares them) are locked too;
- the documented SBOM command produces a CycloneDX document naming every locked
  package with its version and hashes;
- the Dockerfile's install of each lock (--require-hashes --no-deps --only-binary) finds a
  wheel whose hash the lock names for every entry (a dry run: no container engine runs here);
- the documented audit command finds no known vulnerability in the locked
  versions, and where PyPI's advisory data cannot be reached it fails rather than report
  an audit it could not make.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.factories import ROOT

REQUIREMENTS = ROOT / "requirements"
# The image and the tests run Python 3.11 on Linux: markers are evaluated there.
ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.14", "sys_platform": "linux", "platform_system": "Linux",
               "os_name": "posix", "platform_machine": "x86_64", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)", re.MULTILINE)


def locked(name: str) -> dict[str, tuple[str, int]]:
    """A pip-compile lock file: canonical name -> (version, number of sha256 hashes)."""
    text = (REQUIREMENTS / name).read_text()
    entries = {canonicalize_name(m[1]): (m[2], m[3].count("--hash=sha256:")) for m in _ENTRY.finditer(text)}
    requirement_lines = [line for line in text.splitlines() if line and not line[0].isspace() and not line.startswith("#")]
    assert len(requirement_lines) == len(entries), f"{name}: an entry without ==VERSION and a sha256 hash"
    return entries


def applies(requirement: Requirement, extras: set[str] = frozenset()) -> bool:  # type: ignore[assignment]
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**ENVIRONMENT, "extra": extra}) for extra in (extras or {""}))


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def server_requirements() -> list[Requirement]:
    """What the image installs: the server and OpenTelemetry (tracing is off unless configured)."""
    extras = pyproject()["project"]["optional-dependencies"]
    return [Requirement(text) for text in extras["server"] + extras["tracing"]]


def assert_declared_are_locked(declared: list[Requirement], lock: dict[str, tuple[str, int]], name: str) -> None:
    for requirement in declared:
        if not applies(requirement):
            continue
        key = canonicalize_name(requirement.name)
        assert key in lock, f"{requirement} is declared in pyproject.toml but not locked in {name}"
        version = lock[key][0]
        assert requirement.specifier.contains(version, prereleases=True), f"{name} locks {key}=={version}, outside {requirement}"


def test_the_server_lock_holds_every_server_dependency_in_its_declared_range() -> None:
    assert_declared_are_locked(server_requirements(), locked("server.lock"), "server.lock")


def test_the_agent_lock_holds_the_build_backend_in_its_declared_range() -> None:
    """The agent has no runtime dependency; installing it from a checkout runs the build backend."""
    assert pyproject()["project"]["dependencies"] == []
    lock = locked("agent.lock")
    assert_declared_are_locked([Requirement(text) for text in pyproject()["build-system"]["requires"]], lock, "agent.lock")


def test_every_locked_package_s_own_dependencies_are_locked() -> None:
    """The image's lock is closed under dependencies: for each locked package installed
    here (the test extra installs the server's) at the locked version, every requirement
    its metadata declares for this platform is locked too."""
    name = "server.lock"
    lock = locked(name)
    extras: dict[str, set[str]] = {key: set() for key in lock}
    for requirement in server_requirements():
        extras.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    checked = 0
    for key, (version, _) in lock.items():
        try:
            distribution = importlib.metadata.distribution(key)
        except importlib.metadata.PackageNotFoundError:
            continue
        if distribution.version != version:
            continue
        checked += 1
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if applies(requirement, extras.get(key, set())):
                assert canonicalize_name(requirement.name) in lock, f"{key} needs {requirement}, which {name} does not lock"
    assert checked >= len(lock) // 2, f"only {checked} of {len(lock)} locked packages are installed here at their locked version"


def test_the_sbom_names_every_locked_package_with_its_hashes(tmp_path: Path) -> None:
    """The documented command: cyclonedx-py over the server lock, offline."""
    sbom = tmp_path / "chit-server.cdx.json"
    command = [str(Path(sys.executable).parent / "cyclonedx-py"), "requirements", "--pyproject", "pyproject.toml",
               "--output-reproducible", "--of", "JSON", "-o", str(sbom), "requirements/server.lock"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(sbom.read_text())
    assert document["bomFormat"] == "CycloneDX" and document["metadata"]["component"]["name"] == "chit"
    components = {canonicalize_name(c["name"]): c for c in document["components"]}
    lock = locked("server.lock")
    assert set(components) == set(lock)
    for key, (version, hashes) in lock.items():
        component = components[key]
        assert component["version"] == version and component["purl"] == f"pkg:pypi/{component['name']}@{version}"
        listed = [h for reference in component.get("externalReferences", []) for h in reference.get("hashes", [])]
        assert len(listed) == hashes and all(h["alg"] == "SHA-256" for h in listed)


def advisory_service_reachable() -> str | None:
    """None if pypi.org (PyPI's JSON API, pip-audit's default advisory source) answers on 443, else why not."""
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    return None


def test_the_locked_versions_have_no_known_vulnerability() -> None:
    """The documented command: pip-audit over the server lock, hashes required, no resolution.
    Where PyPI's advisory data cannot be reached, the command must fail, never report a clean
    audit it could not make (the docs say to run it where pypi.org answers)."""
    unreachable = advisory_service_reachable()
    command = [str(Path(sys.executable).parent / "pip-audit"), "--requirement", "requirements/server.lock", "--require-hashes",
               "--disable-pip", "--progress-spinner", "off", "--format", "json"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    if unreachable is not None:
        assert result.returncode != 0, f"pypi.org unreachable ({unreachable}), yet pip-audit reported success: {result.stdout[:500]}"
        return
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    assert report is not None, result.stderr
    vulnerable = {d["name"]: [v["id"] for v in d["vulns"]] for d in report["dependencies"] if d.get("vulns")}
    assert not vulnerable, f"known vulnerabilities in the locked versions: {vulnerable}; update requirements/server.lock"
    assert result.returncode == 0, result.stderr
    assert {canonicalize_name(d["name"]) for d in report["dependencies"]} == set(locked("server.lock"))

@pytest.mark.parametrize("lock", ["server.lock", "agent.lock"])
def test_the_dockerfiles_install_of_each_lock_verifies_every_hash(lock: str) -> None:
    """The Dockerfile's own pip options over each lock (no container engine runs here to build
    the image): pip finds a wheel for this platform for every entry and its sha256 matches a
    hash of the lock, or refuses the whole install. --dry-run: nothing is installed."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    options = ["--require-hashes", "--no-deps", "--only-binary=:all:"]
    assert f"{' '.join(options)} -r requirements/{lock}" in dockerfile, "the Dockerfile installs the lock otherwise"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--dry-run", "--ignore-installed",
               *options, "-r", f"requirements/{lock}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
