"""The README's first command: `chit serve --dev`, then `chit dev token` and an exchange."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.factories import ROOT, TOKEN_EXCHANGE, JWT_TYPE, ChitServer, assert_refused, free_port


def test_dev_server_exchanges_a_dev_token(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "chit", "serve", "--dev", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.time() < deadline, "dev server did not start"
            time.sleep(0.2)
        token = subprocess.run(
            [sys.executable, "-m", "chit", "dev", "token", "--namespace", "demo", "--service-account", "agent"],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()
        response = httpx.post(
            f"{url}/token",
            data={"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT_TYPE, "subject_token": token},
        )
        assert response.status_code == 200, response.text
        assert response.json()["scope"] == "demo:read demo:write"
        # The keys and the development issuer live under ./.chit, private.
        assert (tmp_path / ".chit" / "keys").is_dir()
        assert oct((tmp_path / ".chit" / "dev-cluster" / "key.pem").stat().st_mode & 0o777) == "0o600"
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert f"listening on http://127.0.0.1:{port}" in stderr
    # A person reads a --dev server's log: text lines, not the JSON lines of production.
    assert not any(line.startswith("{") for line in stderr.splitlines())
    assert "INFO chit.serve: chit dev mode: listening on" in stderr
    assert "chit dev token --namespace demo --service-account agent" in stderr
    assert "curl -s" in stderr


def test_dev_token_is_not_trusted_outside_dev_mode(tmp_path: Path, chit: ChitServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", "from chit.server.dev import prepare_dev_issuer; from pathlib import Path; prepare_dev_issuer(Path('.chit'))"],
                   cwd=tmp_path, env=env, check=True)
    token = subprocess.run(
        [sys.executable, "-m", "chit", "dev", "token", "--namespace", "demo", "--service-account", "agent"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert_refused(chit.exchange(token))


def test_dev_token_without_a_dev_server_says_what_to_do(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chit", "dev", "token", "--namespace", "demo", "--service-account", "agent"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
    )
    assert result.returncode != 0 and "chit serve --dev" in result.stderr


def dev_token(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chit", "dev", "token", *args], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)


def test_dev_token_output_file_holds_the_token_alone(tmp_path: Path) -> None:
    """google-auth and the LLM SDKs read a token file verbatim: no trailing newline, owner only."""
    from chit.server.dev import prepare_dev_issuer

    prepare_dev_issuer(tmp_path / ".chit")
    result = dev_token(tmp_path, "--namespace", "demo", "--service-account", "agent", "--output", "token.jwt")
    assert result.returncode == 0 and result.stdout == "", result.stderr
    written = (tmp_path / "token.jwt").read_bytes()
    assert written.count(b".") == 2 and not written.endswith(b"\n") and written == written.strip()
    assert oct((tmp_path / "token.jwt").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    "option, value",
    [("--namespace", "Demo"), ("--namespace", "demo/../kube-system"), ("--service-account", "agent_1"), ("--pod", "pod name"), ("--ttl", "0")],
)
def test_dev_token_refuses_what_the_server_would_refuse(tmp_path: Path, option: str, value: str) -> None:
    from chit.server.dev import prepare_dev_issuer

    prepare_dev_issuer(tmp_path / ".chit")
    arguments = {"--namespace": "demo", "--service-account": "agent", option: value}
    result = dev_token(tmp_path, *[word for pair in arguments.items() for word in pair])
    assert result.returncode == 2 and option in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""


def test_version() -> None:
    import chit

    result = subprocess.run([sys.executable, "-m", "chit", "--version"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and result.stdout.strip() == f"chit {chit.__version__}" != "chit 0+unknown"
