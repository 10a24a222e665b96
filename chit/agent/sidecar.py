"""`chit agent`: a sidecar that keeps credential files fresh, one credential per file.

What a consumer can rely on:

- a file appears only whole (written under a temporary name, then renamed over
  the old one) and only with mode 0600: run the consumer as the same user;
- a file holds a credential only while it is valid: the agent removes it
  `REMOVE_BEFORE_EXPIRY` seconds before its credential expires if renewal has
  not succeeded by then, and it removes its files at start (an earlier run may
  have left stale ones) and at exit (nothing would keep them fresh);
- renewal at about 80 % of the time each credential may stay in its file
  (75–85 % of its lifetime less `REMOVE_BEFORE_EXPIRY`, jittered so that pods
  started together do not renew together); a failure is retried with
  jittered exponential backoff (1 s doubling to 30 s, and at least as long as
  chit's Retry-After);
- log lines (stderr) say which file was renewed, with what, until when — never
  a token;
- `renew=on-read` files hold a token nobody has read yet: as soon as the file is
  opened (`chit.agent.reads`), it is replaced by a spare token the agent keeps in
  memory for that moment, or removed if there is none, and a new spare is fetched.
  For relying parties that accept each token once (docs/agents/sidecar.md
  "Single-use tokens").

Network calls run in a worker thread, so neither a slow chit nor a slow metadata
service can keep an expired credential on disk or delay the exit on SIGTERM.
"""

from __future__ import annotations

import logging
import queue
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from chit.attestors.base import CollectionFailed, Collector, PlatformAbsent
from chit.files import remove_file, write_private_file
from chit.agent.exchange import ExchangeError, ExchangeRequest, IssuedCredential, TokenEndpoint, render
from chit.agent.reads import ReadWatcher

log = logging.getLogger("chit.agent")

REMOVE_BEFORE_EXPIRY = 2.0
RENEW_AT = (0.75, 0.85)  # of the time a credential may stay in its file
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One `--file`: where, what is asked for, in which shape."""

    path: Path
    request: ExchangeRequest
    output: str
    renew_on_read: bool = False  # replace the file as soon as it is read


@dataclass(slots=True)
class KeptFile:
    spec: FileSpec
    expires_at: float | None = None  # of the credential on disk; None: no file
    renew_at: float = 0.0  # when the credential on disk is renewed
    spare: IssuedCredential | None = None  # renew_on_read: the next file's credential, never on disk yet
    spare_renew_at: float = 0.0
    due: float = 0.0  # next renewal attempt
    failures: int = 0

    def next_due(self, now: float) -> float:
        """The earliest renewal owed: the file's, then (renew_on_read) the spare's; now for a missing one."""
        due = self.renew_at if self.expires_at is not None else now
        if self.spec.renew_on_read:
            due = min(due, self.spare_renew_at if self.spare is not None else now)
        return due


def backoff(failures: int, rng: random.Random) -> float:
    """Exponential in the number of consecutive failures, jittered over its upper half."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1))
    return rng.uniform(ceiling / 2, ceiling)


def when(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


Outcome = IssuedCredential | ExchangeError | PlatformAbsent | CollectionFailed


class Agent:
    def __init__(self, collector: Collector, endpoint: TokenEndpoint, specs: list[FileSpec]):
        self.collector = collector
        self.endpoint = endpoint
        self.files = [KeptFile(spec) for spec in specs]
        self.rng = random.Random()
        # SimpleQueue.put is reentrant: the signal handler may call it at any point.
        self.events: queue.SimpleQueue[tuple[str, KeptFile | None, Outcome | None]] = queue.SimpleQueue()

    def stop(self) -> None:
        self.events.put(("stop", None, None))

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())
        for kept in self.files:
            kept.spec.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if remove_file(kept.spec.path):
                log.info("removed %s, left by an earlier run", kept.spec.path)
        log.info("keeping %d file(s) fresh with %s evidence from %s", len(self.files), self.collector.kind, self.endpoint.url)
        on_read = {k.spec.path: k for k in self.files if k.spec.renew_on_read}
        if on_read:
            mechanism = ReadWatcher(on_read, lambda path: self.events.put(("read", on_read[path], None))).start()
            log.info("renewing %s as soon as read (noticed by %s)", ", ".join(map(str, on_read)), mechanism)
        try:
            self._loop()
        finally:
            removed = [str(k.spec.path) for k in self.files if remove_file(k.spec.path)]
        log.info("stopped" + (f"; removed {', '.join(removed)}" if removed else ""))
        return 0

    def _loop(self) -> None:
        in_flight: KeptFile | None = None
        while True:
            now = time.time()
            for kept in self.files:
                if kept.expires_at is not None and now >= kept.expires_at - REMOVE_BEFORE_EXPIRY:
                    remove_file(kept.spec.path)
                    log.warning("removed %s: its credential expires at %s and renewal has not succeeded", kept.spec.path, when(kept.expires_at))
                    kept.expires_at = None
                if kept.spare is not None and now >= kept.spare.expires_at - REMOVE_BEFORE_EXPIRY:
                    kept.spare = None
                    kept.due = min(kept.due, now)
            deadlines = [k.expires_at - REMOVE_BEFORE_EXPIRY for k in self.files if k.expires_at is not None]
            deadlines += [k.spare.expires_at - REMOVE_BEFORE_EXPIRY for k in self.files if k.spare is not None]
            if in_flight is None:
                next_up = min(self.files, key=lambda k: k.due)
                if next_up.due <= now:
                    in_flight = next_up
                    threading.Thread(target=self._attempt, args=(next_up,), name="chit-renewal", daemon=True).start()
                else:
                    deadlines.append(next_up.due)
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            try:
                kind, kept, outcome = self.events.get(timeout=timeout)
            except queue.Empty:
                continue
            if kind == "stop":
                return
            if kind == "read":
                assert kept is not None
                self._replace_read(kept)
                continue
            assert kept is not None and outcome is not None
            in_flight = None
            self._settle(kept, outcome)

    def _attempt(self, kept: KeptFile) -> None:
        """In the worker thread: collect fresh evidence and exchange it."""
        outcome: Outcome
        try:
            outcome = self.endpoint.exchange(self.collector.collect(), kept.spec.request)
        except (ExchangeError, PlatformAbsent, CollectionFailed) as error:
            outcome = error
        except Exception as error:  # noqa: BLE001 — reported and retried, the loop must go on
            outcome = ExchangeError("temporarily_unavailable", f"unexpected {type(error).__name__}", temporary=True)
        self.events.put(("attempt", kept, outcome))

    def _renewal_time(self, credential: IssuedCredential, now: float) -> float:
        return now + (credential.expires_at - now - REMOVE_BEFORE_EXPIRY) * self.rng.uniform(*RENEW_AT)

    def _write(self, kept: KeptFile, credential: IssuedCredential) -> None:
        text = render(credential, kept.spec.output)
        write_private_file(kept.spec.path, text if kept.spec.output == "token" else text + "\n")

    def _replace_read(self, kept: KeptFile) -> None:
        """The file was opened: its token counts as used. The spare takes its place, or the file goes."""
        if kept.expires_at is None:
            return
        now = time.time()
        spare, kept.spare = kept.spare, None
        try:
            if spare is None or now >= spare.expires_at - REMOVE_BEFORE_EXPIRY:
                raise FileNotFoundError("no spare")
            self._write(kept, spare)
        except OSError:
            remove_file(kept.spec.path)
            kept.expires_at = None
            log.info("%s was read; removed it until the next credential arrives", kept.spec.path)
        else:
            kept.expires_at, kept.renew_at = spare.expires_at, kept.spare_renew_at
            log.info("%s was read; replaced it with an unread credential valid until %s", kept.spec.path, when(spare.expires_at))
        if kept.failures == 0:  # after failures, the backoff holds
            kept.due = kept.next_due(now)

    def _settle(self, kept: KeptFile, outcome: Outcome) -> None:
        now = time.time()
        path = kept.spec.path
        if isinstance(outcome, IssuedCredential):
            remaining = outcome.expires_at - now
            spare_first = kept.spare is None or kept.spare_renew_at < kept.renew_at
            if remaining <= REMOVE_BEFORE_EXPIRY:
                outcome = ExchangeError("invalid_request", f"chit issued a credential that expires in {remaining:.0f} s", temporary=True)
            elif kept.spec.renew_on_read and kept.expires_at is not None and spare_first:
                # The file holds an unread token: this one waits in memory for the file's first read.
                kept.spare, kept.spare_renew_at, kept.failures = outcome, self._renewal_time(outcome, now), 0
                kept.due = kept.next_due(now)
                log.info("fetched the next credential for %s: %s, valid until %s", path, kept.spec.request.describe(), when(outcome.expires_at))
                return
            else:
                try:
                    self._write(kept, outcome)
                except OSError as error:
                    outcome = ExchangeError("temporarily_unavailable", f"cannot write {path}: {error.strerror}", temporary=True)
                else:
                    kept.expires_at, kept.renew_at, kept.failures = outcome.expires_at, self._renewal_time(outcome, now), 0
                    kept.due = kept.next_due(now)
                    log.info(
                        "renewed %s: %s, valid until %s (%.0f s); next renewal in %.0f s",
                        path, kept.spec.request.describe(), when(outcome.expires_at), remaining, kept.renew_at - now,
                    )
                    return
        kept.failures += 1
        delay = backoff(kept.failures, self.rng)
        retry_after = outcome.retry_after if isinstance(outcome, ExchangeError) else None
        if retry_after is not None:
            delay = max(delay, retry_after)
        kept.due = now + delay
        current = f"the current credential stays until {when(kept.expires_at - REMOVE_BEFORE_EXPIRY)}" if kept.expires_at else "no credential in place"
        log.warning("renewing %s failed (%d in a row): %s; retrying in %.1f s, %s", path, kept.failures, outcome, delay, current)
