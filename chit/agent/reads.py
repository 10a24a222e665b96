"""Noticing that a consumer read a credential file (`chit agent --file …,renew=on-read`).

A relying party that accepts each token once (Anthropic refuses a `jti` it has seen)
is fed from a file its SDK re-reads at every token exchange: as soon as the file
is read, the agent replaces it, so that the next read finds an unused token.

Linux: inotify(7) on the file's directory, through the C library (ctypes: the
agent imports no third-party package). "IN_OPEN (+) File or directory was
opened": the event names the entry, and it comes when the reader holds the file
open, before it has read a byte; whatever the agent renames over the name then,
the reader still reads what it opened. A directory is watched rather than the
file: each renewal renames a new file over the name.

Elsewhere, or when inotify cannot be had (its limits reached): polling every
`POLL_SECONDS` for a file whose access time moved past its modification time.
Each file the agent writes is new, so Linux's default `relatime` updates the
access time at its first read; a file system mounted `noatime` never does, and
then reads go unnoticed (the log says which mechanism is in use).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger("chit.agent")

POLL_SECONDS = 0.02
IN_OPEN = 0x00000020
IN_Q_OVERFLOW = 0x00004000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


class ReadWatcher:
    """Calls `on_read(path)` from a daemon thread each time one of `paths` is opened."""

    def __init__(self, paths: Iterable[Path], on_read: Callable[[Path], None], *, use_inotify: bool = True):
        self.paths = list(paths)
        self.on_read = on_read
        self.mechanism = "none"
        self._use_inotify = use_inotify

    def start(self) -> str:
        """Start watching; returns the mechanism in use: `inotify` or `polling`."""
        if not self.paths:
            return self.mechanism
        watches = self._inotify() if self._use_inotify else None
        if watches is not None:
            fd, by_watch = watches
            self.mechanism = "inotify"
            target: Callable[[], None] = lambda: self._read_events(fd, by_watch)  # noqa: E731
        else:
            self.mechanism = "polling"
            target = self._poll
        threading.Thread(target=target, name="chit-reads", daemon=True).start()
        return self.mechanism

    def _inotify(self) -> tuple[int, dict[int, dict[bytes, Path]]] | None:
        """An inotify descriptor watching every file's directory for opens; None if unavailable."""
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            init, add_watch = libc.inotify_init1, libc.inotify_add_watch
        except (OSError, AttributeError):
            return None
        fd = init(IN_CLOEXEC)
        if fd < 0:
            log.warning("inotify unavailable (%s); noticing reads by polling access times", os.strerror(ctypes.get_errno()))
            return None
        by_watch: dict[int, dict[bytes, Path]] = {}
        for path in self.paths:
            watch = add_watch(fd, os.fsencode(path.parent), IN_OPEN)
            if watch < 0:
                log.warning("cannot watch %s (%s); noticing reads by polling access times", path.parent, os.strerror(ctypes.get_errno()))
                os.close(fd)
                return None
            by_watch.setdefault(watch, {})[os.fsencode(path.name)] = path
        return fd, by_watch

    def _read_events(self, fd: int, by_watch: dict[int, dict[bytes, Path]]) -> None:
        while True:
            try:
                data = os.read(fd, 64 * 1024)
            except InterruptedError:
                continue
            except OSError as error:
                if error.errno == errno.EINTR:
                    continue
                log.error("reading inotify events failed (%s); reads are no longer noticed", error.strerror)
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                watch, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:  # events were lost: any file may have been read
                    for path in self.paths:
                        self.on_read(path)
                elif mask & IN_OPEN and name in by_watch.get(watch, {}):
                    self.on_read(by_watch[watch][name])

    def _poll(self) -> None:
        reported: dict[Path, tuple[int, int]] = {}
        while True:
            for path in self.paths:
                try:
                    status = path.stat()
                except OSError:
                    continue
                seen = (status.st_ino, status.st_atime_ns)
                if status.st_atime_ns > status.st_mtime_ns and reported.get(path) != seen:
                    reported[path] = seen
                    self.on_read(path)
            time.sleep(POLL_SECONDS)
