"""The README's first command: `chit serve --dev`, then `chit dev token` and an exchange."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

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
