"""Atomic files and directories: build under a temp name beside the target, ``os.replace`` it into
place on success, remove it on failure; sweep the temps that killed processes left behind.

Every temp has one name, ``.<name>.tmp-<pid>-<hex>``: hidden, in the target's directory (so the
rename never crosses a filesystem) and carrying the PID that the sweep checks. Long-lived writers
(``writers.sink``, ``writers.labels``) use :func:`temp_path`, :func:`publish` and :func:`discard`;
everything else uses :func:`atomic_path`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("tileseg")  # the CLI's logger: a sweep is reported like the run

#: ``.<name>.tmp-<pid>[-<hex>]``; the leading dot and the hex are optional so that temps of older
#: versions (``<name>.tmp-<pid>-<hex>``, ``.<name>.tmp-<pid>``) are swept too
_TEMP_RE = r"^\.?{name}\.tmp-(\d+)(-[0-9a-f]+)?$"


def temp_path(final: Path) -> Path:
    """A fresh temp name for ``final`` in its directory (nothing is created)."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def discard(tmp: Path) -> None:
    """Remove a temp file or directory if it exists; never raises."""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def publish(tmp: Path, final: Path, *, replace_dir: bool = False) -> None:
    """``os.replace`` ``tmp`` onto ``final``. A directory cannot replace a non-empty directory or a
    file, so with ``replace_dir`` (``tmp`` is a directory) whatever stands at ``final`` is first
    moved aside (under a temp name, so a kill in between leaves only sweepable temps) and removed
    afterwards; without it that case raises ``OSError`` (ENOTEMPTY/EEXIST), which racing creators
    use to learn that they lost."""
    if replace_dir and final.exists():
        old = temp_path(final)
        os.replace(final, old)
        os.replace(tmp, final)
        discard(old)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_path(final: Path, *, replace_dir: bool = False) -> Iterator[Path]:
    """Yield a temp path for ``final``; publish it when the block succeeds, remove it when the block
    or the publishing fails (any exception, interrupts included, re-raised unchanged), so nothing
    complete-looking is ever left behind."""
    tmp = temp_path(final)
    try:
        yield tmp
        publish(tmp, final, replace_dir=replace_dir)
    except BaseException:
        discard(tmp)
        raise


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` may be running on this host (a PID we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(final: Path, *, older_than_s: float | None = None) -> list[Path]:
    """Remove temps of ``final`` left by killed processes (a SIGKILL cannot clean up after itself);
    returns the paths removed. With ``older_than_s=None`` a temp is stale when its PID is not
    running on this host (for paths that only this host writes); otherwise when it is untouched
    for ``older_than_s`` seconds (shared filesystems, where the PID may be another node's).
    Temps of this process are never touched."""
    pat = re.compile(_TEMP_RE.format(name=re.escape(final.name)))
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return []
    now = time.time()
    removed = []
    for p in entries:
        m = pat.match(p.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        if older_than_s is None:
            if _pid_alive(int(m.group(1))):
                continue
        else:
            try:
                if now - p.stat().st_mtime <= older_than_s:
                    continue
            except OSError:
                continue
        log.info("removing %s left by a killed run", p)
        discard(p)
        removed.append(p)
    return removed
