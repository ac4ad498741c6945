"""Crash/resume and sharding through real processes: SIGKILL mid-run then rerun gives the same
output recomputing nothing finished; SIGTERM leaves no output and a resumable store; two shards
(concurrent processes) into one store give the single-process output; refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tilesegcli.errors import StoreError
from tilesegcli.pipeline import RunConfig, predict, run_slide
from tilesegcli.segmenters.simple import SimpleSegmenter
from tilesegcli.store import TileStore


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tilesegcli", "predict", *map(str, args)]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        env.pop(k, None)
    return env


def _done_count(store: Path) -> int:
    root = store / "done" / "c"
    if not root.is_dir():
        return 0
    return sum(1 for d in root.iterdir() for f in d.iterdir() if f.name.isdigit())


def _start_and_stop_midway(out: Path, slide: Path, sig: int) -> tuple[subprocess.Popen, int]:
    store = Path(str(out) + ".tiles.zarr")
    p = subprocess.Popen(_cli(slide, "-o", out, "--model", "simple", "--batch-size", "2",
                              "--num-workers", "1", "--quiet"), env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while _done_count(store) < 4:
        if p.poll() is not None:
            pytest.fail(f"run ended before it could be interrupted: {p.stderr.read().decode()}")
        if time.monotonic() > deadline:
            p.kill()
            pytest.fail("run made no progress")
        time.sleep(0.02)
    p.send_signal(sig)
    p.wait(60)
    return p, _done_count(store)


@pytest.fixture(scope="module")
def reference(big_svs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.geojson"
    [r] = predict(big_svs, segmenter=SimpleSegmenter(), output=out, batch_size=8)
    assert r.status == "done" and r.objects > 50, r
    return out


def test_sigkill_then_resume_is_identical(big_svs, reference, tmp_path, feature_set,
                                          tmp_leftovers):
    out = tmp_path / "k.geojson"
    p, done_before = _start_and_stop_midway(out, big_svs, signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    assert not out.exists()
    [r] = predict(big_svs, segmenter=SimpleSegmenter(), output=out)
    assert r.status == "done"
    assert r.tiles_computed == r.tiles_selected - done_before  # nothing finished recomputed
    assert feature_set(out) == feature_set(reference)
    assert tmp_leftovers(tmp_path) == []  # the killed run's temp output was cleaned up


def test_sigterm_leaves_no_output_and_a_resumable_store(big_svs, reference, tmp_path,
                                                         feature_set, tmp_leftovers):
    out = tmp_path / "t.geojson"
    p, done_before = _start_and_stop_midway(out, big_svs, signal.SIGTERM)
    err = p.stderr.read().decode()
    assert p.returncode == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and tmp_leftovers(tmp_path) == []
    [r] = predict(big_svs, segmenter=SimpleSegmenter(), output=out)
    assert r.status == "done" and r.tiles_computed <= r.tiles_selected - done_before
    assert feature_set(out) == feature_set(reference)


def test_two_concurrent_shards_equal_single_process(big_svs, reference, tmp_path, feature_set):
    out = tmp_path / "s.geojson"
    procs = [subprocess.Popen(_cli(big_svs, "-o", out, "--model", "simple", "--shard", f"{i}/2",
                                   "--num-workers", "1", "--quiet"),
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(2)]
    for p in procs:
        p.wait(300)
        assert p.returncode == 0, p.stderr.read().decode()
    assert feature_set(out) == feature_set(reference)
    store = TileStore.open(Path(str(out) + ".tiles.zarr"))
    assert store.num_shards == 2 and store.is_complete()


def test_slurm_array_env_selects_shard(big_svs, reference, tmp_path, feature_set, monkeypatch):
    out = tmp_path / "a.geojson"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    from tilesegcli.config import parse_shard

    results = []
    for task in ("1", "2"):  # sbatch --array=1-2
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        results += predict(big_svs, segmenter=SimpleSegmenter(), output=out, shard=parse_shard("slurm"))
    assert [r.status for r in results] == ["waiting", "done"]
    assert results[0].tiles_shard + results[1].tiles_shard == results[1].tiles_selected
    assert feature_set(out) == feature_set(reference)


def test_store_from_another_model_is_refused(slide_svs, tmp_path):
    out = tmp_path / "o.geojson"
    cfg = RunConfig(output=out, shard=(0, 2))
    r0 = run_slide(slide_svs, cfg, segmenter=SimpleSegmenter())
    assert r0.status == "waiting"
    with pytest.raises(StoreError, match="another run"):
        run_slide(slide_svs, cfg, segmenter=SimpleSegmenter(seed=1))  # other weights
    with pytest.raises(StoreError, match="another run"):
        run_slide(slide_svs, RunConfig(output=out, shard=(1, 2), tile_size=192),
                  segmenter=SimpleSegmenter())
    with pytest.raises(StoreError, match="2 shard"):
        run_slide(slide_svs, RunConfig(output=out, shard=(1, 3)), segmenter=SimpleSegmenter())
    assert not out.exists()
