from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tilesegcli.atomic import atomic_path, publish, sweep_stale_temps, temp_path


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_success_publishes_and_leaves_no_temp(tmp_path: Path) -> None:
    final = tmp_path / "out.json"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.json.tmp-")
        tmp.write_text("done")
        assert not final.exists()
    assert final.read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_failure_in_block_leaves_neither_temp_nor_final(tmp_path: Path) -> None:
    final = tmp_path / "out.json"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_directory_build_is_removed(tmp_path: Path) -> None:
    final = tmp_path / "store.zarr"
    with pytest.raises(KeyboardInterrupt), atomic_path(final) as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "chunk").write_bytes(b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_final(tmp_path: Path) -> None:
    final = tmp_path / "out.json"
    final.write_text("old")
    with pytest.raises(ValueError), atomic_path(final) as tmp:
        tmp.write_text("new")
        raise ValueError
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_directory_replaces_existing_only_when_asked(tmp_path: Path) -> None:
    final = tmp_path / "labels.zarr"
    (final / "old").mkdir(parents=True)
    with pytest.raises(OSError), atomic_path(final) as tmp:
        (tmp / "new").mkdir(parents=True)
    assert (final / "old").is_dir() and len(list(tmp_path.iterdir())) == 1
    with atomic_path(final, replace_dir=True) as tmp:
        (tmp / "new").mkdir(parents=True)
    assert [p.name for p in final.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["labels.zarr"]


def test_publish_replaces_a_file(tmp_path: Path) -> None:
    final, tmp = tmp_path / "a.txt", temp_path(tmp_path / "a.txt")
    final.write_text("old")
    tmp.write_text("new")
    publish(tmp, final)
    assert final.read_text() == "new" and not tmp.exists()


def test_sweep_removes_temps_of_dead_processes_only(tmp_path: Path) -> None:
    final = tmp_path / "out.geojson"
    dead = _dead_pid()
    stale_file = tmp_path / f".out.geojson.tmp-{dead}-0123abcd"
    stale_old_name = tmp_path / f"out.geojson.tmp-{dead}-89abcdef"  # older versions' name
    stale_dir = tmp_path / f".out.geojson.tmp-{dead}"
    alive = tmp_path / f".out.geojson.tmp-{os.getppid()}-0123abcd"
    mine = temp_path(final)
    other = tmp_path / f".other.geojson.tmp-{dead}-0123abcd"
    for p in (stale_file, stale_old_name, alive, mine, other):
        p.write_text("x")
    (stale_dir / "sub").mkdir(parents=True)
    final.write_text("kept")
    removed = sweep_stale_temps(final)
    assert sorted(removed) == sorted([stale_file, stale_old_name, stale_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (alive, mine, other, final)
    )


def test_sweep_by_age_ignores_liveness(tmp_path: Path) -> None:
    final = tmp_path / "s.zarr"
    old = tmp_path / f".s.zarr.tmp-{os.getppid()}-0123abcd"  # alive, but untouched for long
    fresh = tmp_path / f".s.zarr.tmp-{_dead_pid()}"  # dead here, maybe alive on another node
    for d in (old, fresh):
        (d / "sub").mkdir(parents=True)
    t = time.time() - 2 * 3600
    os.utime(old, (t, t))
    assert sweep_stale_temps(final, older_than_s=3600) == [old]
    assert not old.exists() and fresh.exists()


def test_sweep_of_a_missing_directory_is_a_no_op(tmp_path: Path) -> None:
    assert sweep_stale_temps(tmp_path / "missing" / "out.json") == []
