"""GeoJSON writers: QuPath schema rules (ECOSYSTEM.md §2), round trips through shapely's GeoJSON
reader and GDAL's ogrinfo, CRS declaration, GeoJSONSeq framing, atomic output, stdout."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely

from tilesegcli.errors import OutputError, UsageError
from tilesegcli.formats import format_from_path
from tilesegcli.segmenter import ClassInfo
from tilesegcli.specs import LevelInfo, SlideInfo
from tilesegcli.stitching import StitchedObject
from tilesegcli.tiling import make_grid
from tilesegcli.writers import open_writer

CLASSES = [ClassInfo("background", (0, 0, 0)), ClassInfo("Tumor", (200, 0, 0)), ClassInfo("Stroma", (0, 150, 0))]
SLIDE = SlideInfo("s.svs", "openslide", 8000, 6000, (LevelInfo(8000, 6000, 1.0),), mpp=0.25)
GEO = SlideInfo("a.tif", "tifffile", 900, 900, (LevelInfo(900, 900, 1.0),), mpp=0.5, mpp_unit="m",
                crs="EPSG:32616", geotransform=(733000.0, 0.5, 0.0, 3725000.0, 0.0, -0.5))
QUPATH_PROPERTY_KEYS = {"objectType", "classification", "name", "color", "isLocked", "measurements", "metadata"}


def objects() -> list[StitchedObject]:
    donut = shapely.box(10, 10, 40, 40).difference(shapely.box(20, 20, 30, 30))
    multi = shapely.MultiPolygon([shapely.box(50, 50, 52, 52), shapely.box(52, 52, 54, 54)])
    return [
        StitchedObject(donut, 1, 0.9, "detection"),
        StitchedObject(multi, 2, 0.5, "detection", merged=True),
        StitchedObject(shapely.box(100, 5, 400, 200), 2, 0.75, "annotation"),
        StitchedObject(shapely.box(0, 0, 3, 3), 0, float("nan"), "detection"),  # unclassified
    ]


def write(path, fmt, info=SLIDE, downsample=2.0, objs=None):
    grid = make_grid(int(info.width / downsample), int(info.height / downsample), 256, 32, downsample=downsample)
    with open_writer(path, fmt, classes=CLASSES, info=info, grid=grid) as w:
        for o in objs or objects():
            w.write(o)
    return w


def test_qupath_schema(tmp_path: Path) -> None:
    p = tmp_path / "out.geojson"
    w = write(p, "qupath")
    assert w.count == 4
    doc = json.loads(p.read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection" and "crs" not in doc
    feats = doc["features"]
    ids = [uuid.UUID(f["id"]) for f in feats]  # every id parses as a UUID
    assert len(set(ids)) == 4
    for f, o in zip(feats, objects(), strict=True):
        assert list(f) == ["type", "id", "geometry", "properties"] and f["type"] == "Feature"
        props = f["properties"]
        assert set(props) <= QUPATH_PROPERTY_KEYS and "type" not in props and "object_type" not in props
        assert props["objectType"] == o.kind
        if o.class_id:
            assert props["classification"] == {"name": CLASSES[o.class_id].name,
                                               "color": list(CLASSES[o.class_id].color)}
        else:
            assert "classification" not in props
        meas = props["measurements"]
        assert isinstance(meas, dict)
        assert all(isinstance(v, float) or v in ("NaN", "Infinity", "-Infinity") for v in meas.values())
        # level-0 pixels: working px x downsample 2; area in µm² at 0.25 µm/px
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid
        assert geom.equals(shapely.affinity.scale(o.geometry, 2.0, 2.0, origin=(0, 0)))
        assert meas["Area µm^2"] == pytest.approx(o.geometry.area * 0.25)
    assert feats[3]["properties"]["measurements"]["Score"] == "NaN"
    assert feats[1]["properties"]["metadata"] == {"tileseg_merged": "true"}
    assert len(shapely.geometry.shape(feats[0]["geometry"]).interiors) == 1


def test_round_trip_shapely_reader_and_gzip(tmp_path: Path) -> None:
    p = tmp_path / "out.geojson.gz"
    write(p, "geojson.gz")
    text = gzip.decompress(p.read_bytes()).decode("utf-8")
    coll = shapely.from_geojson(text)  # shapely/GEOS GeoJSON reader
    assert coll.geom_type == "GeometryCollection" and len(coll.geoms) == 4
    for g, o in zip(coll.geoms, objects(), strict=True):
        assert g.equals(shapely.affinity.scale(o.geometry, 2.0, 2.0, origin=(0, 0)))


def test_georeferenced_geojson_declares_crs(tmp_path: Path) -> None:
    p = tmp_path / "geo.geojson"
    write(p, "geojson", info=GEO, downsample=1.0)
    doc = json.loads(p.read_text())
    assert doc["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32616"}}
    g = shapely.geometry.shape(doc["features"][0]["geometry"])
    assert g.bounds == (733005.0, 3724980.0, 733020.0, 3724995.0)
    assert g.exterior.is_ccw
    assert doc["features"][0]["properties"]["measurements"]["Area m^2"] == pytest.approx(g.area)
    # the QuPath flavour stays in level-0 pixels
    q = tmp_path / "geo.qupath.json"
    write(q, "qupath", info=GEO, downsample=1.0)
    assert "crs" not in json.loads(q.read_text())
    assert shapely.geometry.shape(json.loads(q.read_text())["features"][0]["geometry"]).bounds == (10, 10, 40, 40)


def test_geojsonseq_rfc8142(tmp_path: Path) -> None:
    p = tmp_path / "out.geojsons"
    write(p, "geojsonseq")
    raw = p.read_bytes()
    records = raw.split(b"\x1e")[1:]
    assert raw.startswith(b"\x1e") and len(records) == 4
    assert all(r.endswith(b"\n") and json.loads(r)["type"] == "Feature" for r in records)
    g = tmp_path / "geo.geojsons"
    write(g, "geojsonseq", info=GEO, downsample=1.0)
    lon, lat = shapely.geometry.shape(json.loads(g.read_bytes().split(b"\x1e")[1])["geometry"]).centroid.coords[0]
    assert -84.5 < lon < -84.4 and 33.6 < lat < 33.7  # reprojected to WGS 84 (Atlanta)


def test_atomic_output(tmp_path: Path) -> None:
    p = tmp_path / "out.geojson"
    with pytest.raises(RuntimeError):
        with open_writer(p, "qupath", classes=CLASSES, info=SLIDE) as w:
            w.write(objects()[0])
            assert not p.exists()  # nothing at the final name while writing
            raise RuntimeError("model crashed")
    assert list(tmp_path.iterdir()) == []  # temp file removed, nothing complete-looking
    w = open_writer(p, "qupath", classes=CLASSES, info=SLIDE)
    w.write(objects()[0])
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError):
        open_writer(tmp_path / "missing" / "x.geojson", "qupath", classes=CLASSES, info=SLIDE)
    with pytest.raises(UsageError):
        open_writer(p, "shapefile", classes=CLASSES, info=SLIDE)


def test_stdout(capsysbinary) -> None:
    with open_writer("-", "qupath", classes=CLASSES, info=SLIDE) as w:
        w.write(objects()[0])
    doc = json.loads(capsysbinary.readouterr().out)
    assert len(doc["features"]) == 1


def test_min_area_and_simplify_physical_units(tmp_path: Path) -> None:
    p = tmp_path / "f.geojson"
    grid = make_grid(4000, 3000, 256, 32, downsample=2.0)  # working px = 0.5 µm
    circle = shapely.Point(100, 100).buffer(40, quad_segs=64)
    with open_writer(p, "qupath", classes=CLASSES, info=SLIDE, grid=grid, min_area=2.0, simplify=1.0) as w:
        assert w.write(StitchedObject(shapely.box(0, 0, 2, 2), 1, 1.0)) is False  # 1 µm² < 2 µm²
        assert w.write(StitchedObject(circle, 1, 1.0)) is True
    f = json.loads(p.read_text())["features"]
    assert len(f) == 1 and len(f[0]["geometry"]["coordinates"][0]) < 60
    assert f[0]["properties"]["measurements"]["Area µm^2"] == pytest.approx(circle.area * 0.25)


def test_origin_offset(tmp_path: Path) -> None:
    p = tmp_path / "o.json"
    with open_writer(p, "qupath", classes=CLASSES, info=SLIDE, origin=(100, 50)) as w:
        w.write(StitchedObject(shapely.box(100, 50, 110, 60), 1, 1.0))
    g = shapely.geometry.shape(json.loads(p.read_text())["features"][0]["geometry"])
    assert g.bounds == (0, 0, 10, 10)


def test_format_from_path() -> None:
    assert format_from_path("a.geojson") == "geojson"
    assert format_from_path("a.geojson.gz") == "geojson.gz"
    assert format_from_path("a.geojsons") == "geojsonseq"
    assert format_from_path("-") == "qupath"
    with pytest.raises(UsageError):
        format_from_path("a.shp")


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="ogrinfo (gdal-bin) not installed")
def test_ogrinfo_reads_crs_and_features(tmp_path: Path) -> None:
    p = tmp_path / "geo.geojson"
    write(p, "geojson", info=GEO, downsample=1.0)
    out = subprocess.run(["ogrinfo", "-ro", "-al", "-so", str(p)], capture_output=True, text=True, check=True).stdout
    assert "Feature Count: 4" in out and "UTM zone 16N" in out and 'ID["EPSG",32616]' in out
    assert "Extent: (733000.000000, 3724900.000000) - (733200.000000, 3725000.000000)" in out
    for fmt, name in (("geojson.gz", "x.geojson.gz"), ("geojsonseq", "x.geojsons"), ("qupath", "x.json")):
        q = tmp_path / name
        write(q, fmt)
        src = f"/vsigzip/{q}" if fmt == "geojson.gz" else str(q)
        info = subprocess.run(["ogrinfo", "-ro", "-al", "-so", src], capture_output=True, text=True, check=True).stdout
        assert "Feature Count: 4" in info, info
    full = subprocess.run(["ogrinfo", "-ro", "-al", str(tmp_path / "x.json")], capture_output=True, text=True,
                          check=True).stdout
    assert "objectType (String) = detection" in full and "objectType (String) = annotation" in full


def test_matches_real_qupath_export(shared_dir: Path, tmp_path: Path) -> None:
    """Our features have the shape of QuPath 0.5's own export (dlup_qupath05.geojson)."""
    real = json.loads((shared_dir / "data" / "qupath" / "dlup_qupath05.geojson").read_text())
    p = tmp_path / "ours.geojson"
    write(p, "qupath")
    ours = json.loads(p.read_text())
    assert set(ours) == set(real) == {"type", "features"}
    for f in real["features"]:
        uuid.UUID(f["id"])
        assert list(f)[:4] == list(ours["features"][0])
        assert set(f["properties"]) <= QUPATH_PROPERTY_KEYS
    real_geom = shapely.geometry.shape(real["features"][0]["geometry"])
    assert real_geom.is_valid and real_geom.area > 0 and not math.isnan(real_geom.area)
    arr = json.loads((shared_dir / "data" / "qupath" / "cellvit_JP2K-33003-2_cell_detection.geojson").read_text())
    cls = [f["properties"]["classification"] for f in arr]
    assert all(set(c) == {"name", "color"} and len(c["color"]) == 3 for c in cls)
    ours_cls = [f["properties"]["classification"] for f in ours["features"] if "classification" in f["properties"]]
    assert all(set(c) == {"name", "color"} and len(c["color"]) == 3 for c in ours_cls)
    assert np.all(np.array([c["color"] for c in ours_cls]) <= 255)
