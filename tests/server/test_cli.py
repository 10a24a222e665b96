"""The operator's commands that reach the state store: `chit aws forget-instance`, `chit revoke`."""

from __future__ import annotations

from pathlib import Path

from tests.server.test_config import MINIMAL, run_chit, write


def test_forget_instance_with_the_memory_store_says_it_cannot_reach_the_server(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    result = run_chit("aws", "forget-instance", "i-0b02d936754a6d637", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "state.backend is memory" in result.stderr and "running chit server process" in result.stderr
    assert "Traceback" not in result.stderr


def test_forget_instance_refuses_what_is_not_an_instance_id(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    result = run_chit("aws", "forget-instance", "iid:*", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2 and "is not an EC2 instance id" in result.stderr


def test_forget_instance_with_an_unreachable_store_fails_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "state: {backend: redis, redis_url: 'redis://127.0.0.1:1'}\n")
    result = run_chit("aws", "forget-instance", "i-0b02d936754a6d637", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1 and "the state store is unavailable" in result.stderr
    assert "Traceback" not in result.stderr


def test_revoke_with_an_unreachable_store_fails_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "state: {backend: redis, redis_url: 'redis://127.0.0.1:1', timeout_ms: 300}\n")
    result = run_chit("revoke", "--subject", "spiffe://example.org/k8s/prod/ns/a/sa/b", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1 and "the state store is unavailable, nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
