"""Noticing reads of a credential file (chit.agent.reads), with inotify and by polling
access times: a read is reported for the file read, and the agent's own atomic
replacement of the file is not a read."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import pytest

from chit.agent.reads import ReadWatcher
from chit.files import write_private_file


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "polling"])
def test_a_read_is_reported_for_the_file_read_and_a_replacement_is_not(tmp_path: Path, use_inotify: bool) -> None:
    watched, neighbour = tmp_path / "anthropic.token", tmp_path / "openai.token"
    for path in (watched, neighbour):
        write_private_file(path, "token-1")
    reads: queue.SimpleQueue[Path] = queue.SimpleQueue()
    mechanism = ReadWatcher([watched], reads.put, use_inotify=use_inotify).start()
    assert mechanism == ("inotify" if use_inotify else "polling")

    time.sleep(0.05)  # file times have a clock tick's granularity: a read after the write's tick
    neighbour.read_text()
    write_private_file(watched, "token-2")  # the agent's own renewal
    with pytest.raises(queue.Empty):
        reads.get(timeout=0.3)

    time.sleep(0.05)
    assert watched.read_text() == "token-2"
    assert reads.get(timeout=2) == watched
