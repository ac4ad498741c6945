"""Progress of one slide's tiles as log lines, for stderr that is not a terminal (batch jobs,
``2> log``): a line every ``every_s`` seconds and at every tenth of the work, each with tiles
done/total, tiles/s and the ETA. A terminal gets a tqdm bar instead (tilesegcli.runner).

Also the one result line per input that ``tileseg predict`` logs when an input ends.
Standard library only.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable

from tilesegcli.config import SlideResult

log = logging.getLogger("tileseg")

#: default seconds between two progress lines (``--progress-every``, TILESEG_PROGRESS_EVERY)
DEFAULT_EVERY_S = 30.0


def progress_mode(quiet: bool) -> str | None:
    """``"bar"`` on a terminal, ``"lines"`` when stderr is a file or pipe (or NO_COLOR is set),
    None when quiet."""
    if quiet:
        return None
    if sys.stderr.isatty() and not os.environ.get("NO_COLOR"):
        return "bar"
    return "lines"


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LineProgress:
    """Counts finished tiles and logs a line when ``every_s`` seconds have passed since the
    last one or a new tenth of ``total`` is reached (the last line is always 100%).
    ``every_s`` 0 logs every update. ``clock`` is injectable for tests of the timing rule."""

    def __init__(self, total: int, desc: str, *, every_s: float = DEFAULT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic,
                 emit: Callable[[str], None] | None = None) -> None:
        self.total = int(total)
        self.desc = desc
        self.every_s = float(every_s)
        self.done = 0
        self._clock = clock
        self._emit = emit or (lambda line: log.info("%s", line))
        self._t0 = clock()
        self._last_t = self._t0
        self._last_tenth = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        tenth = self.done * 10 // self.total if self.total else 10
        if tenth > self._last_tenth or now - self._last_t >= self.every_s:
            self._last_tenth = max(self._last_tenth, tenth)
            self._last_t = now
            self._emit(self.line(now))

    def line(self, now: float | None = None) -> str:
        now = self._clock() if now is None else now
        elapsed = now - self._t0
        rate = self.done / elapsed if elapsed > 0 else math.inf
        pct = 100 * self.done // self.total if self.total else 100
        left = self.total - self.done
        if left <= 0:
            eta = "done"
        elif self.done and math.isfinite(rate):
            eta = f"ETA {format_duration(left / rate)}"
        else:
            eta = "ETA ?"
        rate_s = f"{rate:.2f}" if math.isfinite(rate) else "?"
        return (f"{self.desc}: {self.done}/{self.total} tiles ({pct}%), {rate_s} tiles/s, "
                f"{format_duration(elapsed)} elapsed, {eta}")

    def close(self) -> None:
        """Nothing to release; kept so it is used like a tqdm bar."""


def result_line(r: SlideResult) -> str:
    """One line per finished input: status, objects, seconds, output path."""
    name = os.path.basename(r.input)
    secs = f"{r.timings.get('total_s', 0.0):.1f} s"
    if r.status == "done":
        objs = f"{r.objects} objects" if r.objects is not None else "regions written"
        return f"{name}: done, {objs}, {secs} -> {r.output}"
    if r.status == "skipped":
        return f"{name}: skipped (exists, --overwrite to redo): {r.output}"
    if r.status == "waiting":
        left = ", ".join(str(i) for i in r.waiting_for) or "none (another shard is merging)"
        return (f"{name}: waiting, no output yet ({r.tiles_done}/{r.tiles_selected} tiles done; "
                f"unfinished shards: {left}), {secs}")
    return f"{name}: {r.status} after {secs}, no output"
