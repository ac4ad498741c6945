"""Annotation readers on files written in the test (and on the real shared data when present)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from tilesegcli.annotations import (
    rasterize,
    read_annotation,
    read_nucls_npy,
    relabel,
    split_binary,
)
from tilesegcli.errors import AnnotationError


def test_rasterize_pixel_corner_convention_and_hole() -> None:
    sq = np.array([[0, 0], [4, 0], [4, 3], [0, 3]], float)  # covers x 0..3, y 0..2
    lab = rasterize([[[sq]]], (5, 6))
    assert lab[:3, :4].tolist() == [[1] * 4] * 3 and lab.sum() == 12
    outer = np.array([[0, 0], [5, 0], [5, 5], [0, 5]], float)
    hole = np.array([[2, 2], [3, 2], [3, 3], [2, 3]], float)  # exactly pixel (2, 2)
    lab = rasterize([[[outer, hole]]], (5, 5))
    assert lab.sum() == 24 and lab[2, 2] == 0
    # scale 0.5: a 4x2 box becomes 2x1 -> pixel centres (0.5, 0.5), (1.5, 0.5) inside
    box = np.array([[0, 0], [4, 0], [4, 2], [0, 2]], float)
    assert rasterize([[[box]]], (3, 3), scale=0.5).tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 0]]


def test_relabel_keeps_classes() -> None:
    lab, cls = relabel(np.array([[0, 5, 5], [9, 0, 2]]), np.arange(1, 10) * 10)
    assert lab.tolist() == [[0, 2, 2], [3, 0, 1]]
    assert cls.tolist() == [20, 50, 90]


def _feature(coords, cls=None, kind="detection"):
    props = {"objectType": kind}
    if cls:
        props["classification"] = {"name": cls, "color": [1, 2, 3]}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords]},
            "properties": props}


def test_geojson_classes_roi_and_multipolygon(tmp_path: Path) -> None:
    feats = [
        _feature([[0, 0], [3, 0], [3, 3], [0, 3], [0, 0]], "Tumor"),
        _feature([[5, 5], [8, 5], [8, 8], [5, 8], [5, 5]], "Stroma"),
        _feature([[0, 0], [10, 0], [10, 6], [0, 6], [0, 0]], "Region*", kind="annotation"),
        {"type": "Feature", "properties": {"objectType": "detection"},
         "geometry": {"type": "MultiPolygon", "coordinates": [
             [[[8, 0], [9, 0], [9, 1], [8, 1], [8, 0]]], [[[8, 2], [9, 2], [9, 3], [8, 3], [8, 2]]]]}},
    ]
    p = tmp_path / "a.geojson"
    p.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    a = read_annotation(p, (10, 10))
    assert a.num_instances == 3
    assert a.class_names == ["background", "Tumor", "Stroma", "nucleus"]
    assert a.classes.tolist() == [1, 2, 3]
    assert (a.labels == 1).sum() == 9 and (a.labels == 3).sum() == 2
    assert a.roi is not None and a.roi.sum() == 60
    with pytest.raises(AnnotationError):
        read_annotation(p)  # polygons need a size


def test_imagescope_xml(tmp_path: Path) -> None:
    xml = """<Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Regions>
      <Region Id="1"><Vertices><Vertex X="0" Y="0"/><Vertex X="2" Y="0"/><Vertex X="2" Y="2"/>
      <Vertex X="0" Y="2"/></Vertices></Region>
      <Region Id="2"><Vertices><Vertex X="4" Y="4"/><Vertex X="6" Y="4"/><Vertex X="6" Y="5"/>
      </Vertices></Region>
      <Region Id="3"><Vertices><Vertex X="1" Y="1"/></Vertices></Region>
    </Regions></Annotation></Annotations>"""
    p = tmp_path / "x.xml"
    p.write_text(xml)
    a = read_annotation(p, (8, 8))
    assert a.num_instances == 2 and (a.labels == 1).sum() == 4
    (tmp_path / "bad.xml").write_text("<Annotations><oops")
    with pytest.raises(AnnotationError):
        read_annotation(tmp_path / "bad.xml", (8, 8))


def test_cpm_text_mask_readme_example(tmp_path: Path) -> None:
    rows = ["00000", "01100", "11200", "02220"]
    vals = [c for r in rows for c in r]
    p = tmp_path / "image01_mask.txt"
    p.write_text("5 4\n" + "\n".join(vals) + "\n")
    a = read_annotation(p)
    assert a.shape == (4, 5) and a.num_instances == 2
    assert (a.labels == 1).sum() == 4 and (a.labels == 2).sum() == 4
    p.write_text("5 4\n0\n1\n")
    with pytest.raises(AnnotationError):
        read_annotation(p)


def test_nucls_pickle_read_without_running_code(tmp_path: Path) -> None:
    inst = np.zeros((6, 6), np.uint32)
    inst[0:2, 0:2] = 1
    inst[3:6, 3:6] = 2
    typ = np.where(inst == 2, 2, np.where(inst == 1, 1, 0)).astype(np.uint32)
    p = tmp_path / "t.npy"
    np.save(p, np.array({"inst_map": inst, "type_map": typ}, dtype=object), allow_pickle=True)
    a = read_annotation(p)
    assert a.class_names == ["background", "Non-Tumor", "Tumor"]
    assert a.classes.tolist() == [1, 2]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.npy"
    with open(evil, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(Evil(), f)
    with pytest.raises(AnnotationError):
        read_nucls_npy(evil)
    assert not (tmp_path / "pwned").exists()


def test_label_images(tmp_path: Path) -> None:
    from PIL import Image

    lab = np.zeros((5, 5), np.uint16)
    lab[0, 0:2] = 3
    lab[4, 4] = 7
    Image.fromarray(lab).save(tmp_path / "l.png")
    a = read_annotation(tmp_path / "l.png")
    assert a.num_instances == 2 and a.labels[0, 0] == 1
    binary = np.zeros((5, 5), np.uint8)
    binary[0, 0:2] = 255
    binary[3:5, 3:5] = 255
    Image.fromarray(binary).save(tmp_path / "b.png")
    assert read_annotation(tmp_path / "b.png").num_instances == 2  # connected components
    np.save(tmp_path / "l.npy", lab.astype(np.int32))
    assert read_annotation(tmp_path / "l.npy", scale=2.0).shape == (10, 10)
    with pytest.raises(AnnotationError):
        read_annotation(tmp_path / "l.npy", (4, 4))
    with pytest.raises(AnnotationError):
        read_annotation(tmp_path / "nothing.png")


def test_real_monuseg_xml_matches_author_mask(shared_dir: Path) -> None:
    from PIL import Image

    d = shared_dir / "data/nuclei/monuseg2018/train"
    name = "TCGA-21-5784-01Z-00-DX1"
    a = read_annotation(d / f"annotations/{name}.xml", (1000, 1000))
    assert a.num_instances == 398
    m = np.asarray(Image.open(d / f"binary_masks_ykrmm/{name}.png")) > 0
    assert ((a.labels > 0) == m).mean() > 0.98  # rasterisation conventions differ by ~1 px


def test_split_binary_separates_touching_discs(tmp_path: Path) -> None:
    from PIL import Image

    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 18) ** 2 <= 81
    b = (yy - 20) ** 2 + (xx - 34) ** 2 <= 81  # overlaps a: one connected component
    c = (yy - 35) ** 2 + (xx - 52) ** 2 <= 4  # small, separate
    m = (a | b | c).astype(np.uint8) * 255
    Image.fromarray(m).save(tmp_path / "m.png")
    assert read_annotation(tmp_path / "m.png").num_instances == 2
    lab = read_annotation(tmp_path / "m.png", split_touching=True).labels
    assert lab.max() == 3 and ((lab > 0) == (m > 0)).all()
    assert len({lab[20, 14], lab[20, 38], lab[35, 52]}) == 3  # disc centres: three objects
    assert (split_binary(np.zeros((5, 5), bool)) == 0).all()


def test_real_monuseg_binary_split_matches_xml(shared_dir: Path) -> None:
    from PIL import Image

    from tilesegcli.eval.metrics import instance_stats

    d = shared_dir / "data/nuclei/monuseg2018/train"
    name = "TCGA-B0-5710-01Z-00-DX1"
    gt = read_annotation(d / f"annotations/{name}.xml", (1000, 1000)).labels
    m = np.asarray(Image.open(d / f"binary_masks_ykrmm/{name}.png"))
    assert instance_stats(gt, split_binary(m)).pq > 0.8


def test_colour_label_map_split_into_parts(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[2:10, 2:10] = (200, 10, 10)  # the same colour painted on two separate nuclei
    rgb[25:33, 40:48] = (200, 10, 10)
    rgb[2:10, 20:28] = (5, 200, 60)
    rgb[35, 5] = (9, 9, 200)  # a one-pixel rasteriser fragment
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_annotation(tmp_path / "c.png", (40, 60)).labels.max() == 3
    lab = read_annotation(tmp_path / "c.png", (40, 60), split_touching=True).labels
    assert lab.max() == 3 and len({lab[5, 5], lab[30, 44], lab[5, 24]}) == 3 and lab[35, 5] == 0


def test_real_monuseg_colour_masks_match_xml(shared_dir: Path) -> None:
    from tilesegcli.eval.metrics import instance_stats

    d = shared_dir / "data/nuclei/monuseg2018/train"
    name = "TCGA-B0-5710-01Z-00-DX1"
    if not (d / f"color_masks_ykrmm/{name}.png").is_file():
        pytest.skip("colour masks not in ../shared")
    gt = read_annotation(d / f"annotations/{name}.xml", (1000, 1000)).labels
    col = read_annotation(d / f"color_masks_ykrmm/{name}.png", (1000, 1000), split_touching=True).labels
    st = instance_stats(gt, col)
    assert st.dq > 0.97 and st.pq > 0.85
