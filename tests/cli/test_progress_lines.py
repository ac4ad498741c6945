"""Logs without a terminal (issue 16.2): progress lines every N seconds and every tenth of the
tiles (done/total, tiles/s, ETA), one result line per input, and the skipped line on a rerun."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tilesegcli.config import SlideResult
from tilesegcli.progress import LineProgress, format_duration, result_line

LINE = re.compile(r"^tileseg: info: (\S+): (\d+)/(\d+) tiles \((\d+)%\), ([\d.]+) tiles/s, "
                  r"\S+ elapsed, (ETA \S+|done)$")


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_line_progress_timing_and_tenths():
    clock, lines = _Clock(), []
    p = LineProgress(1000, "s.svs", every_s=30.0, clock=clock, emit=lines.append)
    for _ in range(50):  # 50 tiles in 25 s: under a tenth and under 30 s -> silent
        clock.t += 0.5
        p.update()
    assert lines == []
    clock.t = 30.0
    p.update()  # 51 tiles after 30 s -> one timed line, 1.70 tiles/s, 949 left -> 9m18s
    assert lines == ["s.svs: 51/1000 tiles (5%), 1.70 tiles/s, 30s elapsed, ETA 9m18s"]
    p.update(49)  # 100 = a tenth, although only 0 s passed
    assert lines[-1].startswith("s.svs: 100/1000 tiles (10%)")
    p.update(5)
    assert len(lines) == 2
    clock.t = 4000.0
    p.update(895)
    assert lines[-1] == "s.svs: 1000/1000 tiles (100%), 0.25 tiles/s, 1h06m elapsed, done"


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 60, 185, 3600, 7620)] == \
        ["0s", "59s", "1m00s", "3m05s", "1h00m", "2h07m"]


def test_result_lines():
    r = SlideResult(input="/d/a.svs", status="done", output="o/a.geojson", objects=12,
                    timings={"total_s": 3.25})
    assert result_line(r) == "a.svs: done, 12 objects, 3.2 s -> o/a.geojson"
    r = SlideResult(input="/d/a.svs", status="waiting", tiles_done=5, tiles_selected=9,
                    waiting_for=[0, 2], timings={"total_s": 1.0})
    assert result_line(r) == ("a.svs: waiting, no output yet (5/9 tiles done; unfinished "
                              "shards: 0, 2), 1.0 s")


def _predict(*args: object, env_extra: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TILESEG_PROGRESS_EVERY"}
    env.update(OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "tilesegcli", "predict", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=300)


def test_subprocess_logs_tenths_result_and_skip(slide_svs, tmp_path):
    out = tmp_path / "a.geojson"
    # stderr is a pipe, not a terminal; a huge interval leaves only the tenths
    p = _predict(slide_svs, "-o", out, "--model", "simple",
                 env_extra={"TILESEG_PROGRESS_EVERY": "1e9"})
    assert p.returncode == 0, p.stderr
    prog = [LINE.match(ln) for ln in p.stderr.splitlines() if " tiles (" in ln]
    assert prog and all(prog), p.stderr
    total = int(prog[0].group(3))
    done = [int(m.group(2)) for m in prog]
    assert len(prog) == 10 and done == sorted(done) and done[-1] == total
    assert [int(m.group(2)) * 10 // total for m in prog] == list(range(1, 11))
    assert prog[-1].group(6) == "done" and all(m.group(6).startswith("ETA") for m in prog[:-1])
    assert "\r" not in p.stderr and "\x1b" not in p.stderr  # no tqdm bar in a log file
    result = [ln for ln in p.stderr.splitlines() if ": done, " in ln]
    assert len(result) == 1 and re.search(rf"done, \d+ objects, [\d.]+ s -> {re.escape(str(out))}$",
                                          result[0]), p.stderr
    again = _predict(slide_svs, "-o", out, "--model", "simple")
    assert again.returncode == 0
    assert f"{slide_svs.name}: skipped (exists, --overwrite to redo): {out}" in again.stderr
    assert " tiles (" not in again.stderr


def test_every_zero_logs_each_tile_and_quiet_logs_nothing(run_cli, slide_svs, tmp_path):
    code, _, err = run_cli("predict", slide_svs, "-o", tmp_path / "a.geojson", "--model",
                           "simple", "--progress-every", "0", "--batch-size", "4")
    assert code == 0, err
    done = [int(m.group(2)) for m in map(LINE.match, err.splitlines()) if m]
    assert done == list(range(1, done[-1] + 1)) and done[-1] > 3
    code, _, err = run_cli("predict", slide_svs, "-o", tmp_path / "b.geojson", "--model",
                           "simple", "-q")
    assert code == 0 and err == ""
