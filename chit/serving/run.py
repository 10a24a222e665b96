"""Running an ASGI app the way every chit process does: uvicorn with chit's HTTP limits
(`chit.serving.http`), one or several workers (`chit.serving.workers`), HTTPS that
follows its files (`chit.serving.tls`), operational logs on stderr (stdout is the
audit log's)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from chit.serving.tls import ReloadingCertificate

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own setting (chit.metrics)


@contextlib.contextmanager
def metrics_across_workers(workers: int) -> Iterator[None]:
    """With several workers, every worker of this run writes its metrics into one fresh
    directory so that a scrape (which reaches one worker) sees all of them; set before
    anything imports prometheus-client, which reads it at import. One worker keeps its
    own registry."""
    if workers <= 1:
        yield
        return
    directory = tempfile.mkdtemp(prefix="chit-metrics-")
    os.environ[METRICS_DIR_ENV] = directory
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_uvicorn(
    factory: str, host: str, port: int, workers: int, certificate: ReloadingCertificate | None = None, log_config: dict | None = None
) -> None:
    """Serve an app factory with chit's HTTP settings (`chit serve`, `chit gateway`, the benchmarks' floors);
    over HTTPS with `certificate` (each worker process loads its own from the same files); logging as
    `log_config` says (`chit serve`'s log section), else plain lines on stderr."""
    from chit.serving.http import MAX_CONNECTIONS_PER_WORKER, LimitedHttpToolsProtocol
    from chit.serving.workers import Supervisor, serve

    settings = dict(
        app=factory,
        factory=True,
        host=host,
        port=port,
        http=LimitedHttpToolsProtocol,
        loop="uvloop" if _has_uvloop() else "asyncio",
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=30,
        limit_concurrency=MAX_CONNECTIONS_PER_WORKER,
        log_config=log_config or _log_config(),
    )
    if workers <= 1:
        serve(settings, certificate=certificate)
        return
    raise SystemExit(Supervisor(settings, host, port, workers, None if certificate is None else certificate.files).run())


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _log_config() -> dict:
    """Operational logs go to stderr; stdout is reserved for the audit log."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "chit": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }
