"""Output sinks: a byte stream written to an atomic temp file (see ``tilesegcli.atomic``) and
published on ``commit()``.

On an exception or ``abort()`` the temp file is removed, so nothing complete-looking remains (a
killed process leaves only a sweepable temp). ``-`` writes to stdout (not atomic).
``CommitOnExit`` gives every writer the same context-manager rule: ``close()`` (commit) on a clean
exit, ``abort()`` on an exception.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
from pathlib import Path
from typing import IO, Self

from tilesegcli.atomic import discard, publish, temp_path
from tilesegcli.errors import OutputError


class CommitOnExit:
    """Mixin for writers with ``close()`` (commit) and ``abort()``: ``with`` commits on success and
    aborts on any exception, so a failed run leaves no complete-looking output."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class AtomicOutput:
    """A binary sink for ``path`` (``"-"`` = stdout); ``gz`` compresses with gzip."""

    def __init__(self, path: str | Path, *, gz: bool = False, buffer_size: int = 1 << 20) -> None:
        self.stdout = str(path) == "-"
        self.path = None if self.stdout else Path(path)
        self.tmp: Path | None = None
        self._raw: IO[bytes]
        if self.stdout:
            self._raw = sys.stdout.buffer
        else:
            assert self.path is not None
            parent = self.path.parent
            if not parent.is_dir():
                raise OutputError(f"output directory does not exist: {parent}")
            self.tmp = temp_path(self.path)
            try:
                self._raw = open(self.tmp, "wb", buffering=buffer_size)  # noqa: SIM115
            except OSError as e:
                raise OutputError(f"cannot write {self.path}: {e.strerror or e}") from None
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6) if gz else None
        self.stream: IO[bytes] = self._gz if self._gz is not None else self._raw
        if self._gz is not None:
            self.stream = io.BufferedWriter(self._gz, buffer_size)  # type: ignore[arg-type]
        self.closed = False

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def commit(self) -> None:
        """Flush, close and move the temp file into place."""
        if self.closed:
            return
        self.closed = True
        try:
            self.stream.flush()
            if self._gz is not None:
                self._gz.close()
            if self.stdout:
                self._raw.flush()
                return
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            assert self.tmp is not None and self.path is not None
            publish(self.tmp, self.path)
        except OSError as e:
            self._discard()
            raise OutputError(f"cannot write {self.path or 'stdout'}: {e.strerror or e}") from None

    def _discard(self) -> None:
        if self.tmp is not None:
            try:
                self._raw.close()
            except OSError:
                pass
            discard(self.tmp)

    def abort(self) -> None:
        """Drop everything written so far (the temp file is removed)."""
        if self.closed:
            return
        self.closed = True
        if self.stdout:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                pass
            return
        self._discard()
