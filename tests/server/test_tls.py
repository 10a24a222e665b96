"""chit serves HTTPS itself: the configured certificate, TLS 1.2 and above only,
a renewed certificate picked up by every worker without a restart (a broken one
never replaces a working one), and plain HTTP only on loopback or when the
operator opted in."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from chit.serving.http import TLS_CLOSE_GRACE_SECONDS
from chit.serving.listen import ListenTls
from chit.serving.tls import RELOAD_SECONDS, load_context
from tests.conftest import TEST_BINDINGS, cluster_config
from tests.factories import (
    ROOT,
    ChitServer,
    ClusterIssuer,
    DocumentServer,
    RedisServer,
    TestCertificateAuthority,
    assert_issued,
    copy_policy,
    free_port,
    peer_certificate_serial,
    run_chit,
    served_serial,
    wait_until,
)

DB = "https://db.internal"
# The files change at once (the kubelet's atomic swap): the next check, RELOAD_SECONDS
# later at most, loads them. The margin covers a slow test machine.
RELOAD_BOUND = RELOAD_SECONDS + 2.0


def handshake(port: int, context: ssl.SSLContext) -> str:
    """The TLS version a new connection negotiates."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as connection:
        return connection.version() or ""


def versions_context(ca: TestCertificateAuthority, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    """A client offering exactly minimum..maximum, with every cipher this OpenSSL still has."""
    context = ca.client_context()
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 and 1.1 are, which is the point
        context.minimum_version, context.maximum_version = minimum, maximum
    return context


@pytest.fixture(scope="module")
def tls_1_1_can_be_offered(tls_ca: TestCertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> bool:
    """Whether this machine's OpenSSL can still negotiate TLS 1.1 at all, checked against
    a permissive server: without that, a failed TLS 1.1 handshake with chit proves nothing."""
    issued = tls_ca.issue()
    pair = tmp_path_factory.mktemp("permissive") / "pair.pem"
    pair.write_bytes(issued.certificate_pem + issued.key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    server.load_cert_chain(pair)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def accept() -> None:
            connection, _ = listener.accept()
            with contextlib.suppress(OSError):
                server.wrap_socket(connection, server_side=True).close()
            connection.close()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            return handshake(listener.getsockname()[1], versions_context(tls_ca, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_1)) == "TLSv1.1"
        except ssl.SSLError:
            return False
        finally:
            thread.join(5)


# --- serving ------------------------------------------------------------------------------------


def test_chit_serves_its_configured_certificate_and_exchanges_over_https(
    tls_chit: ChitServer, tls_ca: TestCertificateAuthority, prod_issuer: ClusterIssuer
) -> None:
    assert tls_chit.certificate is not None
    assert peer_certificate_serial(tls_chit.port, tls_ca.client_context()) == tls_chit.certificate.serial
    body = assert_issued(tls_chit.exchange(prod_issuer.token(), audience=DB, scope="read:db"))
    _, claims = tls_chit.verify_issued(body["access_token"], DB)
    assert claims["iss"] == tls_chit.url and tls_chit.url.startswith("https://")
    assert tls_chit.client.get("/.well-known/openid-configuration").json()["token_endpoint"] == f"{tls_chit.url}/token"
    assert f"listening on https://127.0.0.1:{tls_chit.port}" in tls_chit.log()


def test_the_tls_port_answers_nothing_in_clear(tls_chit: ChitServer) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_chit.port}/healthz", timeout=5)


def test_tls_1_2_and_1_3_are_served_and_1_1_and_below_refused(
    tls_chit: ChitServer, tls_ca: TestCertificateAuthority, tls_1_1_can_be_offered: bool, tmp_path: Path
) -> None:
    assert handshake(tls_chit.port, versions_context(tls_ca, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)) == "TLSv1.2"
    assert handshake(tls_chit.port, versions_context(tls_ca, ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)) == "TLSv1.3"
    # The server's own context refuses anything below TLS 1.2, whatever this machine's client can offer.
    issued = tls_ca.issue()
    (tmp_path / "cert.pem").write_bytes(issued.certificate_pem)
    (tmp_path / "key.pem").write_bytes(issued.key_pem)
    context, _ = load_context(ListenTls(cert_file=tmp_path / "cert.pem", key_file=tmp_path / "key.pem"))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    # And a live legacy handshake fails, where this OpenSSL can still offer one (a failure
    # against a client that cannot offer TLS 1.1 at all would prove nothing).
    legacy_versions = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1) if tls_1_1_can_be_offered else ()
    for legacy in legacy_versions:
        with pytest.raises(ssl.SSLError):
            handshake(tls_chit.port, versions_context(tls_ca, ssl.TLSVersion.TLSv1, legacy))


def test_http_limits_hold_over_tls(tls_chit: ChitServer) -> None:
    response = tls_chit.client.get("/healthz", headers={"X-Padding": "a" * (17 * 1024)})
    assert response.status_code == 431


def established_connections(port: int) -> int:
    """Connections to 127.0.0.1:`port` that the server side holds open (Linux's /proc/net/tcp)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1] == f"0100007F:{port:04X}" and row[3] == "01")


def test_an_idle_tls_connection_is_let_go_without_the_clients_close_notify(tls_chit: ChitServer, tls_ca: TestCertificateAuthority) -> None:
    """uvicorn closes a keep-alive connection after 5 s idle; asyncio would then wait 30 s for
    the client's close_notify, which a pooled, unread connection never sends."""
    with httpx.Client(verify=tls_ca.client_context()) as client:
        assert client.get(f"{tls_chit.url}/healthz").status_code == 200
        assert established_connections(tls_chit.port) >= 1
        wait_until(lambda: established_connections(tls_chit.port) == 0, 5 + TLS_CLOSE_GRACE_SECONDS + 3, "idle connections let go")


def test_stopping_does_not_wait_for_idle_tls_clients(tmp_path: Path, tls_ca: TestCertificateAuthority) -> None:
    server = ChitServer(tmp_path, {}, tls=tls_ca).start()
    assert server.client.get("/healthz").status_code == 200  # a pooled connection, idle from now on
    began = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - began < 10


# --- certificate renewal ---------------------------------------------------------------------------


def start_trickling_request(port: int, context: ssl.SSLContext) -> tuple[ssl.SSLSocket, threading.Event]:
    """A connection made now whose request stays incomplete, a header line every 2 s (within
    chit's 10 s idle limit), until the returned event is set."""
    connection = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    done = threading.Event()

    def trickle() -> None:
        while not done.wait(2):
            connection.sendall(b"X-Still-There: 1\r\n")

    threading.Thread(target=trickle, daemon=True).start()
    return connection, done


def finish_request(connection: ssl.SSLSocket, done: threading.Event) -> bytes:
    done.set()
    time.sleep(0.1)
    connection.sendall(b"Connection: close\r\n\r\n")
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    connection.close()
    return answer


def wait_for_serial(server: ChitServer, context: ssl.SSLContext, serial: int) -> float:
    """Seconds until new connections are served the certificate with `serial`."""
    began = time.monotonic()
    wait_until(lambda: peer_certificate_serial(server.port, context) == serial, RELOAD_BOUND, f"serial {serial:x}; log:\n{server.log()}")
    return time.monotonic() - began


def test_a_renewed_certificate_reaches_new_connections_without_a_restart(tmp_path: Path, tls_ca: TestCertificateAuthority) -> None:
    server = ChitServer(tmp_path, {}, tls=tls_ca).start()
    try:
        assert server.certificate is not None and server.tls_volume is not None
        context = tls_ca.client_context()
        old = server.certificate.serial
        held, done = start_trickling_request(server.port, context)
        renewed = tls_ca.issue()
        server.tls_volume.write_certificate(renewed)
        assert wait_for_serial(server, context, renewed.serial) <= RELOAD_BOUND
        assert all(peer_certificate_serial(server.port, context) == renewed.serial for _ in range(5))
        # The connection made before the renewal keeps its certificate and completes its request.
        assert served_serial(held) == old
        assert finish_request(held, done).startswith(b"HTTP/1.1 200")
        assert server.process is not None and server.process.poll() is None
        assert server.log().count("Started server process") == 1  # no restart
        assert f"serial {renewed.serial:x}" in server.log()
    finally:
        server.stop()


def test_a_broken_renewal_keeps_the_certificate_in_service_and_is_logged(tmp_path: Path, tls_ca: TestCertificateAuthority) -> None:
    server = ChitServer(tmp_path, {}, tls=tls_ca).start()
    try:
        assert server.certificate is not None and server.tls_volume is not None
        context = tls_ca.client_context()
        renewed, stranger = tls_ca.issue(), tls_ca.issue()
        server.tls_volume.write_certificate(renewed, key_pem=stranger.key_pem)  # the key of another certificate
        wait_until(lambda: "does not load" in server.log(), RELOAD_BOUND, f"the failed reload in the log:\n{server.log()}")
        line = next(line for line in server.log().splitlines() if "does not load" in line)
        entry = json.loads(line)  # production logs: JSON lines (docs/operators/logs.md)
        assert entry["level"] == "ERROR" and entry["logger"] == "chit.tls"
        assert "listen.tls.key_file" in entry["message"] and str(tmp_path / "tls" / "tls.key") in entry["message"]
        for _ in range(5):
            assert peer_certificate_serial(server.port, context) == server.certificate.serial
        assert server.client.get("/readyz").status_code == 200
        # Said once, however many checks find the files still broken.
        time.sleep(RELOAD_SECONDS + 0.5)
        assert server.log().count("does not load") == 1
        # Fixed files are loaded at the next check.
        server.tls_volume.write_certificate(renewed)
        wait_for_serial(server, context, renewed.serial)
    finally:
        server.stop()


def test_every_worker_picks_up_the_renewed_certificate(tmp_path: Path, tls_ca: TestCertificateAuthority, redis_server: RedisServer) -> None:
    server = ChitServer(tmp_path, {"state": {"backend": "redis", "redis_url": redis_server.url}}, workers=2, tls=tls_ca).start()
    try:
        assert server.tls_volume is not None
        wait_until(lambda: server.log().count(" serves CN=") == 2, 10, "both workers serving")
        renewed = tls_ca.issue()
        server.tls_volume.write_certificate(renewed)
        wait_until(lambda: server.log().count(f" now serves CN=127.0.0.1, serial {renewed.serial:x}") == 2, RELOAD_BOUND,
                   f"both workers reloading; log:\n{server.log()}")
        # New connections spread over both workers' sockets (SO_REUSEPORT): all get the new certificate.
        context = tls_ca.client_context()
        assert {peer_certificate_serial(server.port, context) for _ in range(20)} == {renewed.serial}
    finally:
        server.stop()


# --- plain HTTP --------------------------------------------------------------------------------------


def serve_briefly(tmp_path: Path, config: dict, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "chit.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "chit", "serve", "--config", str(path), *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_plain_http_beyond_loopback_refuses_to_start_and_names_the_keys(tmp_path: Path) -> None:
    config = {"issuer": "https://chit.example.org", "listen": {"host": "0.0.0.0", "port": free_port()}, "signing": {"keys_dir": "keys"}}
    result = serve_briefly(tmp_path, config)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'chit.yaml'}: listen.host 0.0.0.0 is not a loopback address" in result.stderr
    for key in ("listen.tls.cert_file", "listen.tls.key_file", "listen.plain_http"):
        assert key in result.stderr
    assert "listening" not in result.stderr
    # So does a loopback configuration moved off loopback on the command line.
    loopback = {**config, "listen": {"host": "127.0.0.1", "port": free_port()}}
    moved = serve_briefly(tmp_path, loopback, "--host", "0.0.0.0")
    assert moved.returncode == 2 and "listen.host 0.0.0.0 is not a loopback address" in moved.stderr
    (tmp_path / "chit.yaml").write_text(yaml.safe_dump(config))
    checked = run_chit("config", "check", "--config", str(tmp_path / "chit.yaml"))
    assert checked.returncode == 1 and "listen.plain_http" in checked.stderr


@pytest.fixture
def plain_http_chit(tmp_path: Path, documents: DocumentServer) -> Iterator[ChitServer]:
    config = {
        "listen": {"host": "0.0.0.0", "plain_http": True},
        "policy": {"dir": str(copy_policy(tmp_path / "policies", TEST_BINDINGS))},
        "attestors": {"kubernetes": {"clusters": cluster_config(documents, Path("/nonexistent"))[:1]}},
    }
    server = ChitServer(tmp_path, config).start()
    yield server
    server.stop()


def test_plain_http_beyond_loopback_starts_with_the_opt_in_and_a_warning(plain_http_chit: ChitServer, prod_issuer: ClusterIssuer, tmp_path: Path) -> None:
    warning = next(line for line in plain_http_chit.log().splitlines() if "WARNING" in line)
    assert "listen.plain_http is true" in warning and "in clear" in warning
    assert plain_http_chit.client.get("/readyz").status_code == 200
    # The agent side of the same choice: a token over plain HTTP to another host needs its own opt-in.
    token_file = tmp_path / "token"
    token_file.write_text(prod_issuer.token())
    beyond_loopback = f"http://0.0.0.0:{plain_http_chit.port}"
    refused = run_chit("exchange", "--server", beyond_loopback, "--subject-token-file", str(token_file), "--audience", DB)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "would cross the network in clear" in refused.stderr and "--insecure-http" in refused.stderr
    allowed = run_chit("exchange", "--server", beyond_loopback, "--insecure-http", "--subject-token-file", str(token_file), "--audience", DB)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stderr.startswith("chit exchange: warning: --insecure-http") and allowed.stdout.count(".") == 2


# --- certificate files at start ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cert_file, key_file, message",
    [
        ("tls.crt", "absent.key", "listen.tls.key_file {dir}/absent.key: cannot read it: No such file or directory"),
        ("absent.crt", "tls.key", "listen.tls.cert_file {dir}/absent.crt: cannot read it: No such file or directory"),
        ("tls.key", "tls.key", "listen.tls.cert_file {dir}/tls.key: no PEM certificate in it"),
        ("tls.crt", "tls.crt", "listen.tls.key_file {dir}/tls.crt: not a PEM private key for the certificate in listen.tls.cert_file "
                               "{dir}/tls.crt (an encrypted key is not supported)"),
        ("tls.crt", "other.key", "listen.tls.key_file {dir}/other.key is not the key of the certificate in listen.tls.cert_file {dir}/tls.crt"),
    ],
    ids=["missing-key", "missing-certificate", "not-a-certificate", "not-a-key", "key-of-another-certificate"],
)
def test_unusable_certificate_files_stop_the_start_naming_the_key_and_the_file(
    tmp_path: Path, tls_ca: TestCertificateAuthority, cert_file: str, key_file: str, message: str
) -> None:
    issued, other = tls_ca.issue(), tls_ca.issue()
    (tmp_path / "tls.crt").write_bytes(issued.certificate_pem)
    (tmp_path / "tls.key").write_bytes(issued.key_pem)
    (tmp_path / "other.key").write_bytes(other.key_pem)
    port = free_port()
    config = {
        "issuer": f"https://127.0.0.1:{port}",
        "listen": {"host": "127.0.0.1", "port": port, "tls": {"cert_file": cert_file, "key_file": key_file}},
        "signing": {"keys_dir": "keys"},
    }
    result = serve_briefly(tmp_path, config)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == f"chit: {message.format(dir=tmp_path)}\n"
