"""Read ground truth / training annotations into instance label images.

Owns every annotation format tileseg accepts for ``train`` and ``eval``:

* QuPath GeoJSON (FeatureCollection or bare array; detections, cells, annotations with
  ``classification``). Features whose class is one of ``roi_classes`` are not instances: they mark
  the region of interest where training patches may be sampled / where metrics apply.
* Aperio ImageScope XML (MoNuSeg): one ``Region`` = one instance.
* CPM-15 ASCII instance maps (``width height`` then one label per pixel, row-major).
* NuCLS label dicts (``.npy`` holding a pickled dict with ``inst_map``/``type_map``). These are
  read with a restricted unpickler that only rebuilds plain numpy arrays, so a hostile file cannot
  run code (never ``allow_pickle=True``).
* Instance label images: PNG/TIFF/npy (0 = background, k = instance k).

Everything returns an :class:`Annotation`: an (H, W) int32 label image, the class of every
instance, the class-name table, and an optional ROI mask. Polygon vertices are in pixel
coordinates of the full-resolution image with pixel (i, j) covering [i, i+1) x [j, j+1)
(QuPath's convention); a pixel belongs to a polygon when its centre is inside.
"""

from __future__ import annotations

import io
import json
import pickle
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tilesegcli.errors import AnnotationError

DEFAULT_ROI_CLASSES = ("Region*", "ROI", "Region of interest")
LABEL_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
POLYGON_SUFFIXES = (".geojson", ".json", ".xml")


@dataclass
class Annotation:
    """Instances of one image. labels: (H, W) int32, 0 = background, k = instance k.
    classes: (K,) int64 class index of instance k+1 (into class_names; 0 is background, so >= 1).
    roi: (H, W) bool mask where annotations are complete, or None (= whole image)."""

    labels: np.ndarray
    classes: np.ndarray
    class_names: list[str] = field(default_factory=lambda: ["background", "nucleus"])
    roi: np.ndarray | None = None

    @property
    def num_instances(self) -> int:
        return int(len(self.classes))

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.labels.shape[0]), int(self.labels.shape[1]))

    def semantic(self) -> np.ndarray:
        """(H, W) int64 class index per pixel (0 = background)."""
        lut = np.concatenate([[0], self.classes]).astype(np.int64)
        return lut[self.labels]


# ----------------------------------------------------------------------------- rasterising
# An instance is a list of polygons (MultiPolygon parts); a polygon is [exterior, *holes]; a ring
# is an (N, 2) float array of (x, y) vertices at full resolution.
Ring = np.ndarray
Polygon = list  # list[Ring]
Instance = list  # list[Polygon]


def rasterize(instances: Sequence[Instance], shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """Draw instances into an (H, W) int32 label image with id k+1 = instances[k] (not compacted:
    use :func:`relabel`). Vertices are multiplied by ``scale`` first; a pixel is inside when its
    centre is. Later instances overwrite earlier ones where they overlap."""
    from skimage.draw import polygon as draw_polygon

    h, w = shape
    out = np.zeros((h, w), np.int32)
    for k, inst in enumerate(instances, start=1):
        rings = [np.asarray(r, np.float64).reshape(-1, 2) * scale - 0.5 for poly in inst for r in poly]
        rings = [r for r in rings if len(r) >= 3]
        if not rings:
            continue
        allv = np.concatenate(rings)
        x0 = max(int(np.floor(allv[:, 0].min())), 0)
        y0 = max(int(np.floor(allv[:, 1].min())), 0)
        x1 = min(int(np.ceil(allv[:, 0].max())) + 1, w)
        y1 = min(int(np.ceil(allv[:, 1].max())) + 1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        m = np.zeros((y1 - y0, x1 - x0), bool)
        for poly in inst:
            for j, ring in enumerate(poly):
                xy = np.asarray(ring, np.float64).reshape(-1, 2) * scale - 0.5
                if len(xy) < 3:
                    continue
                rr, cc = draw_polygon(xy[:, 1] - y0, xy[:, 0] - x0, shape=m.shape)
                m[rr, cc] = j == 0  # exterior fills, holes clear
        out[y0:y1, x0:x1][m] = k
    return out


def relabel(labels: np.ndarray, classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Renumber a label image to 1..K in order of first id, dropping ids with no pixels.
    Returns (labels int32, classes int64 of the kept ids; ones when ``classes`` is None)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise AnnotationError(f"label image must be 2-D, got shape {labels.shape}")
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if labels.size and (labels.min() < 0):
        raise AnnotationError("label image has negative ids")
    if len(ids) == 0:
        return np.zeros(labels.shape, np.int32), np.zeros(0, np.int64)
    new = np.searchsorted(ids, labels)  # background 0 -> 0 because ids > 0
    out = np.where(labels == 0, 0, new + 1).astype(np.int32)
    if classes is None:
        cls = np.ones(len(ids), np.int64)
    else:
        cls = np.asarray(classes, np.int64)[ids - 1]
    return out, cls


# ----------------------------------------------------------------------------- GeoJSON
def _geometry_polygons(geom: dict) -> Instance:
    t = geom.get("type")
    coords = geom.get("coordinates") or []
    try:
        if t == "Polygon":
            return [[np.asarray(r, np.float64)[:, :2] for r in coords]]
        if t == "MultiPolygon":
            return [[np.asarray(r, np.float64)[:, :2] for r in poly] for poly in coords]
    except (ValueError, IndexError, TypeError) as e:
        raise AnnotationError(f"bad {t} coordinates ({e})") from e
    if t == "GeometryCollection":
        return [p for g in geom.get("geometries", []) for p in _geometry_polygons(g)]
    return []  # points/lines carry no area


def _feature_class(props: dict) -> str | None:
    c = props.get("classification")
    if isinstance(c, dict):
        if "name" in c:
            return str(c["name"])
        if "names" in c and c["names"]:
            return ": ".join(str(n) for n in c["names"])
    if isinstance(c, str):
        return c
    return None


def read_geojson(
    path: str | Path,
    shape: tuple[int, int],
    *,
    scale: float = 1.0,
    roi_classes: Sequence[str] = DEFAULT_ROI_CLASSES,
    class_names: Sequence[str] | None = None,
) -> Annotation:
    """QuPath GeoJSON -> Annotation. Cells use their ``nucleusGeometry`` when present.
    Unclassified objects get class "nucleus" (or class_names[1] if given)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(f"{path}: not readable GeoJSON ({e})") from e
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    elif isinstance(data, list):
        feats = data
    else:
        raise AnnotationError(f"{path}: expected a GeoJSON FeatureCollection or list of Features")
    names = list(class_names) if class_names else ["background"]
    default = names[1] if len(names) > 1 else "nucleus"
    rois: list[Instance] = []
    polys: list[Instance] = []
    cls_names: list[str] = []
    for f in feats:
        if not isinstance(f, dict):
            continue
        props = f.get("properties") or {}
        geom = f.get("nucleusGeometry") or f.get("geometry")
        if not isinstance(geom, dict):
            continue
        cname = _feature_class(props)
        inst = _geometry_polygons(geom)
        if not inst:
            continue
        if cname is not None and _is_roi(cname, roi_classes):
            rois.append(inst)
            continue
        polys.append(inst)
        cls_names.append(cname or default)
    for n in cls_names:
        if n not in names:
            if class_names:
                raise AnnotationError(f"{path}: class {n!r} not in {list(class_names)}")
            names.append(n)
    if len(names) == 1:
        names.append(default)
    labels, classes = relabel(
        rasterize(polys, shape, scale), np.asarray([names.index(n) for n in cls_names], np.int64)
    )
    roi = rasterize(rois, shape, scale) > 0 if rois else None
    return Annotation(labels, classes, names, roi)


def _is_roi(name: str, roi_classes: Sequence[str]) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name.lower(), pat.lower()) for pat in roi_classes)


# ----------------------------------------------------------------------------- ImageScope XML
def read_imagescope_xml(path: str | Path, shape: tuple[int, int], *, scale: float = 1.0) -> Annotation:
    """Aperio ImageScope XML (MoNuSeg): every ``Region`` with >= 3 vertices is one instance.
    Regions with ``NegativeROA="1"`` are holes of the preceding region. Each ``Annotation`` layer
    with a non-empty Name becomes a class; unnamed layers are "nucleus"."""
    try:
        root = ET.parse(str(path)).getroot()
    except (OSError, ET.ParseError) as e:
        raise AnnotationError(f"{path}: not readable ImageScope XML ({e})") from e
    if root.tag != "Annotations":
        raise AnnotationError(f"{path}: root element is <{root.tag}>, expected <Annotations>")
    names = ["background"]
    polys: list[Instance] = []
    cls: list[int] = []
    for ann in root.iter("Annotation"):
        cname = (ann.get("Name") or "").strip() or "nucleus"
        if cname not in names:
            names.append(cname)
        for region in ann.iter("Region"):
            try:
                xy = np.array(
                    [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")],
                    np.float64,
                ).reshape(-1, 2)
            except (TypeError, ValueError) as e:
                raise AnnotationError(f"{path}: bad vertex in region {region.get('Id')} ({e})") from e
            if len(xy) < 3:
                continue
            if region.get("NegativeROA") == "1" and polys:
                polys[-1][0].append(xy)
                continue
            polys.append([[xy]])
            cls.append(names.index(cname))
    if len(names) == 1:
        names.append("nucleus")
    labels, classes = relabel(rasterize(polys, shape, scale), np.asarray(cls, np.int64))
    return Annotation(labels, classes, names, None)


def imagescope_mpp(path: str | Path) -> float | None:
    """``MicronsPerPixel`` of the XML root, when present."""
    try:
        v = ET.parse(str(path)).getroot().get("MicronsPerPixel")
        return float(v) if v else None
    except (OSError, ET.ParseError, ValueError):
        return None


# ----------------------------------------------------------------------------- label maps
def read_cpm_mask(path: str | Path) -> np.ndarray:
    """CPM-15 ``imageXX_mask.txt``: 'width height' then width*height labels, row-major."""
    try:
        vals = np.loadtxt(str(path), dtype=np.int64, max_rows=1)
        body = np.loadtxt(str(path), dtype=np.int64, skiprows=1)
    except (OSError, ValueError) as e:
        raise AnnotationError(f"{path}: not a CPM-15 mask text file ({e})") from e
    if vals.shape != (2,):
        raise AnnotationError(f"{path}: first line must be 'width height'")
    w, h = int(vals[0]), int(vals[1])
    if body.size != w * h:
        raise AnnotationError(f"{path}: {body.size} labels for a {w}x{h} image")
    return body.reshape(h, w)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers, refuses every other global (no code runs)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self._ALLOWED:
            if name == "_reconstruct":
                from numpy._core.multiarray import _reconstruct

                return _reconstruct
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_nucls_npy(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """NuCLS/CellViT label file: a .npy holding a pickled dict {inst_map, type_map}.
    Returns (inst_map, type_map). Read with a numpy-only unpickler, never allow_pickle."""
    try:
        raw = Path(path).read_bytes()
        f = io.BytesIO(raw)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            _, _, dtype = np.lib.format.read_array_header_2_0(f)
        if not dtype.hasobject:
            raise AnnotationError(f"{path}: not a pickled label dict")
        obj = _NumpyOnlyUnpickler(f).load()
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise AnnotationError(f"{path}: cannot read NuCLS label dict ({e})") from e
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict) or "inst_map" not in obj:
        raise AnnotationError(f"{path}: expected a dict with 'inst_map'")
    inst = np.asarray(obj["inst_map"])
    typ = np.asarray(obj.get("type_map", (inst > 0).astype(np.int64)))
    if inst.shape != typ.shape or inst.ndim != 2:
        raise AnnotationError(f"{path}: inst_map/type_map shapes differ or are not 2-D")
    return inst, typ


def classes_from_type_map(inst: np.ndarray, typ: np.ndarray) -> np.ndarray:
    """Majority type per instance id 1..max(inst) (0 where the id is absent)."""
    n = int(inst.max()) if inst.size else 0
    if n == 0:
        return np.zeros(0, np.int64)
    ntypes = int(typ.max()) + 1
    counts = np.bincount(inst.ravel().astype(np.int64) * ntypes + typ.ravel().astype(np.int64),
                         minlength=(n + 1) * ntypes).reshape(n + 1, ntypes)
    counts[:, 0] = 0  # a nucleus pixel typed 0 does not vote for background
    return counts[1:].argmax(axis=1).astype(np.int64)


def read_label_image(path: str | Path) -> np.ndarray:
    """PNG/TIFF/npy instance label image (2-D integer). Binary 0/255 masks are read as 0/1."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".npy":
            arr = np.load(str(p), allow_pickle=False)
        elif p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(str(p))
        else:
            from PIL import Image

            with Image.open(p) as im:
                arr = np.asarray(im)
    except (OSError, ValueError) as e:
        raise AnnotationError(f"{p}: cannot read label image ({e})") from e
    arr = np.squeeze(arr)
    if arr.ndim == 3:  # RGB(A) label images: all channels equal, or encode id as r<<16|g<<8|b
        if np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 0] == arr[..., 2]):
            arr = arr[..., 0]
        else:
            a = arr[..., :3].astype(np.int64)
            arr = (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise AnnotationError(f"{p}: label image must be a 2-D integer array, got {arr.dtype}{arr.shape}")
    return arr.astype(np.int64)


def split_binary(mask: np.ndarray, min_distance: int = 5) -> np.ndarray:
    """Binary (semantic) nucleus mask -> instance labels: distance-transform watershed seeded at
    the smoothed distance maxima at least ``min_distance`` px apart, so touching nuclei become
    separate instances (used for training data that only has binary masks)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    fg = mask > 0
    comp, _ = ndi.label(fg)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg), 1.0)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=comp, exclude_border=False)
    markers = np.zeros(fg.shape, np.int64)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    lab = watershed(-dist, markers, mask=fg)
    # components without a seed (tiny or flat) keep their own label
    missing = fg & (lab == 0)
    if missing.any():
        extra, _ = ndi.label(missing)
        lab = np.where(missing, extra + lab.max(), lab)
    return lab.astype(np.int64)


def resize_labels(labels: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize sampling at pixel centres (keeps ids exact)."""
    h, w = labels.shape
    oh, ow = out_shape
    ys = np.minimum(((np.arange(oh) + 0.5) * h / oh).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(ow) + 0.5) * w / ow).astype(np.int64), w - 1)
    return labels[ys[:, None], xs[None, :]]


# ----------------------------------------------------------------------------- dispatch
def detect_format(path: str | Path) -> str:
    """'geojson' | 'imagescope' | 'cpm' | 'nucls' | 'label'."""
    p = Path(path)
    suf = p.suffix.lower()
    if suf in (".geojson", ".json"):
        return "geojson"
    if suf == ".xml":
        return "imagescope"
    if suf == ".txt":
        return "cpm"
    if suf == ".npy":
        try:
            with open(p, "rb") as f:
                np.lib.format.read_magic(f)
                head = f.read(200)
            return "nucls" if b"'|O'" in head else "label"
        except (OSError, ValueError) as e:
            raise AnnotationError(f"{p}: not a .npy file ({e})") from e
    if suf in LABEL_IMAGE_SUFFIXES:
        return "label"
    raise AnnotationError(f"{p}: unknown annotation format (want .geojson/.json/.xml/.txt/.npy/.png/.tif)")


def native_shape(path: str | Path) -> tuple[int, int] | None:
    """Full-resolution (H, W) an annotation file defines itself (label maps), else None."""
    fmt = detect_format(path)
    if fmt == "label":
        return read_label_image(path).shape  # type: ignore[return-value]
    if fmt == "cpm":
        with open(path) as f:
            w, h = (int(v) for v in f.readline().split()[:2])
        return (h, w)
    if fmt == "nucls":
        return read_nucls_npy(path)[0].shape  # type: ignore[return-value]
    return None


#: label maps split into connected parts: smaller parts are edge fragments of a rasteriser (the
#: MoNuSeg colour masks have 40-80 of 1-20 px per image; the smallest nucleus in the XML is 57 px)
MIN_PART_AREA = 30


def read_annotation(
    path: str | Path,
    shape: tuple[int, int] | None = None,
    *,
    scale: float = 1.0,
    roi_classes: Sequence[str] = DEFAULT_ROI_CLASSES,
    class_names: Sequence[str] | None = None,
    split_touching: bool = False,
) -> Annotation:
    """Read any supported annotation file. ``shape`` is the full-resolution (H, W) of the image
    (required for polygon formats, checked for label maps); the result has shape
    round(shape * scale). A binary mask (0/1 or 0/255) becomes one instance per connected
    component, or with ``split_touching`` is split by :func:`split_binary`; a label map with
    ``split_touching`` becomes one instance per connected part of each label (colour masks),
    parts under ``MIN_PART_AREA`` full-resolution pixels dropped."""
    if not Path(path).is_file():
        raise AnnotationError(f"{path}: no such annotation file")
    fmt = detect_format(path)
    if fmt in ("geojson", "imagescope"):
        if shape is None:
            raise AnnotationError(f"{path}: polygon annotations need the image size (--size H W)")
        out_shape = (int(round(shape[0] * scale)), int(round(shape[1] * scale)))
        if fmt == "geojson":
            return read_geojson(path, out_shape, scale=scale, roi_classes=roi_classes,
                                class_names=class_names)
        return read_imagescope_xml(path, out_shape, scale=scale)
    classes = None
    names = list(class_names) if class_names else ["background", "nucleus"]
    if fmt == "cpm":
        lab = read_cpm_mask(path)
    elif fmt == "nucls":
        lab, typ = read_nucls_npy(path)
        lab = lab.astype(np.int64)
        classes = classes_from_type_map(lab, typ)
        if not class_names:
            names = ["background", "Non-Tumor", "Tumor"]
    else:
        lab = read_label_image(path)
        from skimage.measure import label as cc_label

        if lab.size and (lab.max() <= 1 or set(np.unique(lab).tolist()) <= {0, 255}):
            lab = split_binary(lab) if split_touching else cc_label(lab > 0, connectivity=1)
        elif split_touching:  # colour-coded maps reuse colours: one instance per 4-connected part
            lab = cc_label(lab, background=0, connectivity=1)
            small = np.bincount(lab.ravel()) < MIN_PART_AREA  # rasteriser fragments (1-20 px)
            small[0] = False
            lab[small[lab]] = 0
    if shape is not None and tuple(lab.shape) != tuple(shape):
        raise AnnotationError(f"{path}: label map is {lab.shape[1]}x{lab.shape[0]}, image is {shape[1]}x{shape[0]}")
    if scale != 1.0:
        lab = resize_labels(lab, (int(round(lab.shape[0] * scale)), int(round(lab.shape[1] * scale))))
    labels, cls = relabel(lab, classes)
    if classes is not None and len(cls) and cls.min() < 1:
        cls = np.maximum(cls, 1)  # nucleus pixels without a type: first class
    return Annotation(labels, cls, names, None)
