"""Serving with several worker processes, each with its own listening socket.

uvicorn's own multi-worker mode shares one listening socket: whichever worker
wakes first accepts every pending connection, so with long-lived keep-alive
connections (agents, load balancers) one worker can end up with all of them
while the others idle. Here every worker binds its own socket with
SO_REUSEPORT and the kernel spreads new connections across them.

Over HTTPS every worker loads the certificate into its own context and
follows its files on its own (chit/serving/tls.py).

The supervisor restarts a worker that dies (a crash in a native library must
not take the service down) and, on SIGTERM or SIGINT, lets every worker finish
its in-flight requests before exiting 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from typing import Any

from chit.serving.listen import ListenTls
from chit.serving.tls import CertificateError, HttpsServer, ReloadingCertificate

log = logging.getLogger("chit.workers")

STARTUP_TIMEOUT = 60.0
RESTART_DELAY = 1.0
SHUTDOWN_TIMEOUT = 35.0  # uvicorn's graceful timeout (30 s) plus a margin


def bind_reuseport(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: dict[str, Any], sockets: list[socket.socket] | None = None, certificate: ReloadingCertificate | None = None) -> None:
    """Run uvicorn until SIGTERM or SIGINT, then return once in-flight requests are done;
    over HTTPS with `certificate`.

    uvicorn re-raises the signal after its graceful shutdown, which would end the
    process as killed by it; a stop that drained cleanly exits 0 instead."""
    import uvicorn

    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)  # what uvicorn restores and re-raises into
    config = uvicorn.Config(**settings)
    server = uvicorn.Server(config) if certificate is None else HttpsServer(config, certificate)
    server.run(sockets=sockets)


def _worker(
    settings: dict[str, Any], host: str, port: int, tls: ListenTls | None, report: multiprocessing.connection.Connection
) -> None:
    """One worker process: bind, load its own certificate, report, serve until told to stop."""
    try:
        sock = bind_reuseport(host, port)
    except OSError as error:
        report.send(f"cannot listen on {host}:{port}: {error.strerror}")
        raise SystemExit(3) from None
    try:
        certificate = None if tls is None else ReloadingCertificate(tls)
    except CertificateError as error:
        report.send(str(error))
        raise SystemExit(3) from None
    report.send("bound")
    report.close()
    serve(settings, [sock], certificate)


class Supervisor:
    def __init__(self, settings: dict[str, Any], host: str, port: int, workers: int, tls: ListenTls | None = None):
        self.settings, self.host, self.port, self.count, self.tls = settings, host, port, workers, tls
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.stopping = False

    def _start(self) -> tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]:
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_worker, args=(self.settings, self.host, self.port, self.tls, sender), daemon=False)
        process.start()
        sender.close()
        return process, receiver

    def _await_bound(self, process: multiprocessing.process.BaseProcess, receiver: multiprocessing.connection.Connection) -> None:
        message = receiver.recv() if receiver.poll(STARTUP_TIMEOUT) else "worker did not start in time"
        receiver.close()
        if message != "bound":
            raise RuntimeError(message)
        log.info("worker %s listening on %s:%s", process.pid, self.host, self.port)

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        try:
            for _ in range(self.count):
                process, receiver = self._start()
                self.processes.append(process)
                self._await_bound(process, receiver)
        except (RuntimeError, EOFError) as error:
            log.error("%s", error)
            self._shutdown()
            return 1
        while not self.stopping:
            time.sleep(0.2)
            for index, process in enumerate(self.processes):
                if process.is_alive() or self.stopping:
                    continue
                log.error("worker %s exited with %s; starting a new one", process.pid, process.exitcode)
                time.sleep(RESTART_DELAY)
                try:
                    replacement, receiver = self._start()
                    self.processes[index] = replacement
                    self._await_bound(replacement, receiver)
                except (RuntimeError, EOFError) as error:
                    log.error("cannot replace the worker: %s", error)
        self._shutdown()
        return 0

    def _shutdown(self) -> None:
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
