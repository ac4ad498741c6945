"""Sharding is explicit (issue 16.1): ``--shard I/N`` or ``--shard slurm``, never taken from the
environment by itself; a run that ends without its output says so on stderr and in the summary.

The README's one-slide-per-task recipe runs as a real subprocess inside a faked array task's
environment (the variables SLURM sets), so the whole slide must be processed by that task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tilesegcli.config import parse_shard
from tilesegcli.errors import UsageError

ARRAY_ENV = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
             "SLURM_ARRAY_TASK_STEP")


@pytest.fixture
def no_array_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ARRAY_ENV:
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def reference(slide_svs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process output every sharded run must equal."""
    out = tmp_path_factory.mktemp("ref") / "ref.geojson"
    env = {k: v for k, v in os.environ.items() if k not in ARRAY_ENV}
    p = subprocess.run([sys.executable, "-m", "tilesegcli", "predict", str(slide_svs), "-o",
                        str(out), "--model", "simple", "-q"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return out


def test_parse_shard_is_explicit():
    array = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"}
    assert parse_shard(None, env=array) == (0, 1)  # inside an array, still the whole input
    assert parse_shard("1/4", env=array) == (1, 4)
    assert parse_shard("slurm", env=array) == (2, 3)
    assert parse_shard(" SLURM ", env={"SLURM_ARRAY_TASK_ID": "0",
                                       "SLURM_ARRAY_TASK_COUNT": "2"}) == (0, 2)
    step = {"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_COUNT": "8",
            "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2"}  # --array=0-14:2
    assert parse_shard("slurm", env=step) == (7, 8)
    # slurm/N: the shard count is fixed, so one task resubmitted alone keeps its shard
    resubmitted = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "1",
                   "SLURM_ARRAY_TASK_MIN": "2"}  # sbatch --array=2 after an --array=0-3 run
    assert parse_shard("slurm", env=resubmitted) == (0, 1)  # the plain form cannot know
    assert parse_shard("slurm/4", env=resubmitted) == (2, 4)


@pytest.mark.parametrize("text, env, match", [
    ("4/4", {}, "0 <= I < N"),
    ("a/b", {}, "I/N"),
    ("1", {}, "I/N"),
    ("-1/2", {}, "I/N"),
    ("1/0", {}, "0 <= I < N"),
    ("slurm", {}, "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT not set"),
    ("slurm", {"SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_TASK_COUNT not set"),
    ("slurm", {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "not integers"),
    # --array=1,4,9: COUNT 3, MIN 1 -> task 9 has no place among 3 evenly spaced tasks
    ("slurm", {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3",
               "SLURM_ARRAY_TASK_MIN": "1"}, "evenly spaced"),
])
def test_parse_shard_refuses(text, env, match):
    with pytest.raises(UsageError, match=match):
        parse_shard(text, env=env)


@pytest.mark.parametrize("text, env, match", [
    ("slurm/4", {}, "SLURM_ARRAY_TASK_ID not set"),
    ("slurm/4", {"SLURM_ARRAY_TASK_ID": "4"}, "not one of 0..3; submit with --array=0-3"),
    ("slurm/0", {"SLURM_ARRAY_TASK_ID": "0"}, "N >= 1"),
    ("slurm/x", {"SLURM_ARRAY_TASK_ID": "0"}, "N >= 1"),
])
def test_parse_shard_slurm_fixed_count_refuses(text, env, match):
    with pytest.raises(UsageError, match=match):
        parse_shard(text, env=env)


def test_one_slide_per_task_recipe_processes_the_whole_slide(slide_svs, reference, tmp_path,
                                                             feature_set):
    # sed -n "${SLURM_ARRAY_TASK_ID}p" slides.txt | tileseg predict --inputs - --outdir /results
    env = {k: v for k, v in os.environ.items() if k not in ARRAY_ENV}
    env.update(SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_COUNT="3", SLURM_ARRAY_JOB_ID="77",
               SLURM_JOB_ID="79", OMP_NUM_THREADS="1")
    outdir = tmp_path / "results"
    p = subprocess.run([sys.executable, "-m", "tilesegcli", "predict", "--inputs", "-",
                        "--outdir", str(outdir), "--model", "simple", "--summary",
                        str(tmp_path / "s.json")], input=f"{slide_svs}\n", env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    slide = s["slides"][0]
    assert slide["status"] == "done" and s["complete"] is True and s["waiting"] == []
    assert slide["tiles_shard"] == slide["tiles_computed"] == slide["tiles_selected"] > 3
    out = outdir / f"{slide_svs.stem}.geojson"
    assert p.stdout.strip() == str(out)
    assert feature_set(out) == feature_set(reference)


def test_shard_slurm_outside_an_array_is_a_usage_error(run_cli, slide_svs, tmp_path,
                                                       no_array_env):
    code, out, err = run_cli("predict", slide_svs, "-o", tmp_path / "x.geojson", "--model",
                             "simple", "--shard", "slurm")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "SLURM_ARRAY_TASK_ID" in err and "--shard" in err
    assert list(tmp_path.iterdir()) == []


def test_shard_slurm_tasks_then_output_equals_single_run(run_cli, slide_svs, reference, tmp_path,
                                                         feature_set, monkeypatch):
    out = tmp_path / "a.geojson"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.delenv("SLURM_ARRAY_TASK_STEP", raising=False)
    summaries = []
    for task in ("1", "2"):  # sbatch --array=1-2
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        code, stdout, err = run_cli("predict", slide_svs, "-o", out, "--model", "simple",
                                    "--shard", "slurm", "--summary", tmp_path / f"t{task}.json")
        assert code == 0, err
        summaries.append((stdout, err, json.loads((tmp_path / f"t{task}.json").read_text())))
    (out1, err1, s1), (out2, _, s2) = summaries
    # the first task ends without the output, and says so (stderr and summary), not on stdout
    assert out1 == "" and "no output yet" in err1 and "shard(s) 1/2" in err1
    assert "tileseg merge" in err1
    assert s1["ok"] is True and s1["complete"] is False and s1["counts"]["waiting"] == 1
    assert s1["slides"][0]["waiting_for"] == [1] and "no output yet" in s1["waiting"][0]
    assert s2["complete"] is True and s2["slides"][0]["status"] == "done"
    assert out2.strip() == str(out)
    assert feature_set(out) == feature_set(reference)


def test_waiting_names_every_missing_shard(run_cli, slide_svs, tmp_path, no_array_env):
    out = tmp_path / "w.geojson"
    code, stdout, err = run_cli("predict", slide_svs, "-o", out, "--model", "simple",
                                "--shard", "1/3", "--summary", "-")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["slides"][0]["waiting_for"] == [0, 2] and not out.exists()
    assert "shard(s) 0/3, 2/3" in err and "tile(s) left" in err
