"""Exit codes and the one error style (issue 16.3): usage errors (click's own included, an
unknown model, a bad option combination, a missing file given as an option) exit 2 with one
``tileseg: error: ...`` line; failed inputs exit 1; ``--summary`` is written even when the run
stops before any input ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _only_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tileseg: error: "), err
    return lines[0]


@pytest.mark.parametrize("args, says", [
    (["predict", "a.svs", "--bogus"], "No such option '--bogus'"),
    (["predict", "a.svs", "--tile-size", "8"], "--tile-size"),
    (["predict", "a.svs", "--roi", "missing.geojson"], "missing.geojson"),
    (["predict", "a.svs", "--shard", "3/2"], "0 <= I < N"),
    (["predict", "a.svs", "-o", "x.geojson", "--outdir", "d"], "not both"),
    (["predict", "a.svs", "-o", "x.geojson", "--model", "no-such-model"], "unknown model"),
    (["predict", "a.svs", "-o", "x.geojson", "--weights", "missing.pt"], "--weights missing.pt"),
    (["predict", "a.svs", "-o", "x.geojson", "--model", "simple", "--weights", "a.svs"],
     "--weights does not apply"),
    (["predict", "--inputs", "missing.txt", "--outdir", "d"], "missing.txt"),
    (["merge", "missing.zarr", "-o", "x.geojson"], "missing.zarr"),
    (["models", "show", "no-such-model"], "unknown model"),
    (["no-such-command"], "No such command"),
])
def test_usage_errors_are_one_line_and_exit_2(run_cli, tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.svs").write_bytes(b"x")
    code, out, err = run_cli(*args, "-q") if args[0] == "predict" else run_cli(*args)
    assert code == 2 and out == ""
    assert says in _only_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.svs"]  # nothing written


def test_subprocess_click_error_style():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "tilesegcli", "predict", "--batch-size", "0"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    line = _only_line(p.stderr)
    assert "--batch-size" in line and "tileseg predict --help" in line


@pytest.mark.parametrize("how", ["unknown-model", "click-error", "equals-form"])
def test_summary_written_when_the_run_fails_early(run_cli, tmp_path, how):
    s = tmp_path / "run.json"
    args = {"unknown-model": ["--model", "no-such-model", "--summary", s],
            "click-error": ["--summary", s, "--overlap", "-3"],
            "equals-form": ["--nope", f"--summary={s}"]}[how]
    code, _, err = run_cli("predict", tmp_path / "a.svs", "-o", tmp_path / "a.geojson", *args)
    assert code == 2
    data = json.loads(s.read_text())
    assert data["ok"] is False and data["complete"] is False and data["exit_code"] == 2
    assert data["slides"] == [] and data["error"] and data["error"] in err


def test_failed_input_exits_1_and_summary_says_so(run_cli, slide_svs, tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide" * 50)
    s = tmp_path / "run.json"
    code, out, err = run_cli("predict", bad, slide_svs, "--outdir", tmp_path / "o", "--model",
                             "simple", "--summary", s, "-q")
    assert code == 1 and out.strip() == str(tmp_path / "o" / f"{slide_svs.stem}.geojson")
    assert "bad.svs" in _only_line(err)  # the per-input log line has the same style
    data = json.loads(s.read_text())
    assert data["exit_code"] == 1 and data["error"] is None and data["ok"] is False
    assert data["counts"] == {"done": 1, "skipped": 0, "waiting": 0, "failed": 1}
