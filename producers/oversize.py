"""Input too big to carry: lines read with a size cap, and payloads kept aside in files.

Kafka carries messages up to about 1 MB (librdkafka's ``message.max.bytes``); a dead letter whose
payload is bigger is refused by the producer (``MSG_SIZE_TOO_LARGE``) and would sit at the head of
the spool. So a dead letter carries at most ``dead_letter_max_payload_bytes`` of its payload (an
excerpt from the start); the whole payload goes to ``<data_dir>/dead-letters/<sha256>``, and the
dead letter's reason names the size, the hash and that file.

``capped_lines`` reads a file line by line without ever holding more than ``max_line`` bytes of a
line: a longer line is streamed into the payload store (hashing as it goes) and comes out as an
``Oversize`` (its excerpt, size, hash and file), so ingest memory does not depend on the input.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Oversize:
    """A line longer than the cap: what is left of it once it has been streamed aside."""
    excerpt: bytes
    size: int
    sha256: str
    kept: Path | None      # the file holding all of it, or None when no store was given

    def describe(self, limit: int, setting: str) -> str:
        where = f"; full payload in {self.kept}" if self.kept else ""
        return f"{self.size:,} bytes, over the limit of {limit:,} ({setting}); sha256 {self.sha256}{where}"


class PayloadStore:
    """Whole payloads by their SHA-256, in one directory (content-addressed: kept once however
    often the same payload comes)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def keep(self, payload: bytes) -> tuple[str, Path]:
        sha = hashlib.sha256(payload).hexdigest()
        path = self.dir / sha
        if not path.exists():
            with self.writer() as w:
                w.write(payload)
            return w.sha256, w.path
        return sha, path

    def writer(self) -> "_Writer":
        return _Writer(self.dir)


class _Writer:
    """Stream a payload into the store; its name (the hash) is known only at the end."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".partial-")
        self._file, self._tmp, self._dir = os.fdopen(fd, "wb"), Path(tmp), directory
        self._hash = hashlib.sha256()
        self.size = 0
        self.sha256 = ""
        self.path: Path | None = None

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def __enter__(self) -> "_Writer":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._file.close()
        if exc_type is not None:
            self._tmp.unlink(missing_ok=True)
            return
        self.sha256 = self._hash.hexdigest()
        self.path = self._dir / self.sha256
        os.replace(self._tmp, self.path)


def capped_lines(f: IO[bytes], max_line: int, store: PayloadStore | None = None,
                 excerpt: int = 4096) -> Iterator[bytes | Oversize]:
    """The lines of a binary file (with their newline); a line longer than ``max_line`` bytes is
    an ``Oversize`` instead, its bytes streamed into ``store`` (or only hashed, without one)."""
    while True:
        line = f.readline(max_line + 1)
        if not line:
            return
        if len(line) <= max_line or line.endswith(b"\n") and len(line) == max_line + 1:
            yield line
            continue
        head = line[:excerpt]
        if store is not None:
            with store.writer() as sink:
                _drain(f, line, sink.write)
            yield Oversize(head, sink.size, sink.sha256, sink.path)
        else:
            digest, size = hashlib.sha256(), 0

            def count(data: bytes) -> None:
                nonlocal size
                digest.update(data)
                size += len(data)

            _drain(f, line, count)
            yield Oversize(head, size, digest.hexdigest(), None)


def _drain(f: IO[bytes], first: bytes, write) -> None:
    """Pass ``first`` and the rest of its line to ``write``, a bounded chunk at a time."""
    chunk = first
    while True:
        write(chunk)
        if chunk.endswith(b"\n"):
            return
        chunk = f.readline(CHUNK)
        if not chunk:
            return
