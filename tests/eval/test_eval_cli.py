"""`tileseg eval` end to end on files written in the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from tilesegcli.cli.eval import eval_cmd


def _write(tmp_path: Path) -> tuple[Path, Path]:
    gt = np.zeros((4, 6), np.int32)
    gt[0:2, 0:2] = 1
    gt[0:2, 3:6] = 2
    gt[3, 0:2] = 3
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    np.save(tmp_path / "gt" / "img1.npy", gt)
    # prediction as GeoJSON polygons: A = x 0..3, y 0..2; B = x 4..6, y 0..2; C = x 4..6, y 3
    feats = []
    for x0, y0, x1, y1 in [(0, 0, 3, 2), (4, 0, 6, 2), (4, 3, 6, 4)]:
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": {"objectType": "detection"}})
    (tmp_path / "pred" / "img1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return tmp_path / "pred", tmp_path / "gt"


def test_eval_directories_json(tmp_path: Path) -> None:
    pred, gt = _write(tmp_path)
    out = tmp_path / "s.json"
    r = CliRunner().invoke(eval_cmd, [str(pred), str(gt), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "img1" in r.output and "POOLED" in r.output
    d = json.loads(out.read_text())
    im = d["images"][0]
    # same hand case as test_metrics: PQ 4/9, AJI 8/16, Dice 2/3, mIoU 0.5
    assert abs(im["pq"] - 4 / 9) < 1e-9 and abs(im["aji"] - 0.5) < 1e-9
    assert abs(im["dice"] - 2 / 3) < 1e-9 and abs(im["miou"] - 0.5) < 1e-9
    assert d["overall"]["mean"]["pq"] == im["pq"]


def test_eval_errors_are_one_line(tmp_path: Path) -> None:
    pred, gt = _write(tmp_path)
    np.save(gt / "img2.npy", np.zeros((2, 2), np.int32))  # no prediction for img2
    r = subprocess.run([sys.executable, "-m", "tilesegcli", "eval", str(pred), str(gt)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no prediction" in r.stderr and "Traceback" not in r.stderr
    (gt / "img2.npy").unlink()
    p = pred / "img1.geojson"
    r = subprocess.run([sys.executable, "-m", "tilesegcli", "eval", str(p), str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--size" in r.stderr
    (pred / "img1.geojson").write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "tilesegcli", "eval", str(pred), str(gt)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "GeoJSON" in r.stderr and "Traceback" not in r.stderr
