"""Score prediction files against ground-truth files: pairing, class alignment, table and JSON.

``evaluate(pred, gt)`` accepts two files or two directories (paired by file stem) in any format
:mod:`tilesegcli.annotations` reads, and returns per-image and overall metrics. The image size
of polygon formats comes from whichever side is a label map, or from ``size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tilesegcli.annotations import (
    LABEL_IMAGE_SUFFIXES,
    Annotation,
    native_shape,
    read_annotation,
)
from tilesegcli.errors import AnnotationError, UsageError
from tilesegcli.eval.metrics import (
    InstanceStats,
    confusion,
    instance_stats,
    iou_per_class,
    mean_summary,
    miou,
    pool,
)

ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml", ".txt", *LABEL_IMAGE_SUFFIXES)
_STRIP = (".geojson", ".json", ".xml", ".txt", ".npy", ".png", ".tif", ".tiff", ".svs", ".ome")


@dataclass
class ImageResult:
    name: str
    stats: InstanceStats
    conf: np.ndarray  # semantic confusion over ``classes``
    classes: list[str]

    def to_dict(self) -> dict:
        d = {"image": self.name, **self.stats.to_dict()}
        d["miou"] = miou(self.conf)
        d["iou_per_class"] = dict(zip(self.classes, _nan_none(iou_per_class(self.conf)), strict=True))
        return d


@dataclass
class EvalReport:
    images: list[ImageResult] = field(default_factory=list)

    def overall(self) -> dict:
        stats = [r.stats for r in self.images]
        classes = self.images[0].classes if self.images else []
        same = all(r.classes == classes for r in self.images)
        out: dict = {"n_images": len(self.images), "mean": mean_summary(stats),
                     "pooled": pool(stats).summary() if stats else {}}
        if self.images and same:
            conf = sum((r.conf for r in self.images), np.zeros_like(self.images[0].conf))
            out["pooled"]["miou"] = miou(conf)
            out["pooled"]["iou_per_class"] = dict(zip(classes, _nan_none(iou_per_class(conf)), strict=True))
        out["mean"]["miou"] = _nanmean([miou(r.conf) for r in self.images])
        return out

    def to_dict(self) -> dict:
        return {"images": [r.to_dict() for r in self.images], "overall": self.overall(),
                "definitions": "PQ/DQ/SQ/F1 match at IoU>0.5; AJI per Kumar et al. 2017; Dice = "
                               "binary foreground; mean = average over images, pooled = summed counts"}

    def table(self) -> str:
        cols = ["pq", "dq", "sq", "aji", "f1", "dice", "miou", "n_gt", "n_pred"]
        rows = [[r.name] + [_fmt(r.to_dict()[c]) for c in cols] for r in self.images]
        ov = self.overall()
        rows.append(["MEAN"] + [_fmt(ov["mean"].get(c, math.nan)) for c in cols])
        rows.append(["POOLED"] + [_fmt(ov["pooled"].get(c, math.nan)) for c in cols])
        head = ["image"] + [c.upper() for c in cols]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
        lines = ["  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                           for i, (x, w) in enumerate(zip(row, widths, strict=True)))
                 for row in [head, *rows]]
        return "\n".join(lines)


def _nanmean(v: Sequence[float]) -> float:
    v = [x for x in v if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def _nan_none(a: np.ndarray) -> list[float | None]:
    return [None if math.isnan(float(x)) else float(x) for x in a]


def _fmt(x: float | int | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return "nan" if math.isnan(x) else f"{x:.4f}"


def stem(path: Path) -> str:
    """File name without annotation/image suffixes ('a.tif.geojson' -> 'a')."""
    name = path.name
    changed = True
    while changed:
        changed = False
        for s in _STRIP:
            if name.lower().endswith(s) and len(name) > len(s):
                name = name[: -len(s)]
                changed = True
    return name


def pair_inputs(pred: Path, gt: Path) -> list[tuple[str, Path, Path]]:
    """(name, pred file, gt file) pairs. Directories pair files of equal stem; GT files without
    a prediction are an error (a missing prediction must not silently raise the score)."""
    if pred.is_file() and gt.is_file():
        return [(stem(gt), pred, gt)]
    if pred.is_dir() and gt.is_dir():
        def files(d: Path) -> dict[str, Path]:
            return {stem(p): p for p in sorted(d.iterdir())
                    if p.is_file() and p.suffix.lower() in ANNOTATION_SUFFIXES}
        pf, gf = files(pred), files(gt)
        missing = sorted(set(gf) - set(pf))
        if missing:
            raise UsageError(f"no prediction for {len(missing)} GT file(s), e.g. {missing[0]!r} in {pred}")
        if not gf:
            raise UsageError(f"no annotation files in {gt}")
        return [(k, pf[k], gf[k]) for k in sorted(gf)]
    for p in (pred, gt):
        if not p.exists():
            raise UsageError(f"{p}: no such file or directory")
    raise UsageError("PRED and GT must both be files or both be directories")


def align_classes(pred: Annotation, gt: Annotation) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Semantic maps of both sides over one class list. If either side has a single foreground
    class, both collapse to background/foreground; otherwise classes are matched by name."""
    if len(gt.class_names) <= 2 or len(pred.class_names) <= 2:
        names = ["background", "foreground"]
        return (gt.labels > 0).astype(np.int64), (pred.labels > 0).astype(np.int64), names
    names = list(gt.class_names)
    for n in pred.class_names:
        if n not in names:
            names.append(n)
    lut_p = np.array([names.index(n) for n in pred.class_names], np.int64)
    return gt.semantic(), lut_p[pred.semantic()], names


def evaluate_pair(name: str, pred_path: Path, gt_path: Path,
                  size: tuple[int, int] | None = None) -> ImageResult:
    shape = size or native_shape(gt_path) or native_shape(pred_path)
    if shape is None:
        raise UsageError(f"{name}: both files are polygons; give the image size with --size H W")
    gt = read_annotation(gt_path, shape)
    pred = read_annotation(pred_path, shape)
    if gt.shape != pred.shape:
        raise AnnotationError(f"{name}: prediction is {pred.shape[::-1]}, GT is {gt.shape[::-1]} (WxH)")
    if gt.roi is not None:  # score only inside the GT's region of interest
        keep_g = np.unique(gt.labels[gt.roi])
        keep_p = np.unique(pred.labels[gt.roi])
        gt.labels = np.where(np.isin(gt.labels, keep_g), gt.labels, 0)
        pred.labels = np.where(np.isin(pred.labels, keep_p), pred.labels, 0)
    stats = instance_stats(gt.labels, pred.labels)
    gs, ps, names = align_classes(pred, gt)
    return ImageResult(name, stats, confusion(gs, ps, len(names)), names)


def evaluate(pred: str | Path, gt: str | Path, size: tuple[int, int] | None = None) -> EvalReport:
    """Score PRED against GT (files or directories)."""
    rep = EvalReport()
    for name, p, g in pair_inputs(Path(pred), Path(gt)):
        rep.images.append(evaluate_pair(name, p, g, size))
    return rep


def evaluate_arrays(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> EvalReport:
    """Score in-memory (name, gt_labels, pred_labels) pairs (single class), e.g. validation."""
    rep = EvalReport()
    for name, g, p in pairs:
        conf = confusion((g > 0).astype(np.int64), (p > 0).astype(np.int64), 2)
        rep.images.append(ImageResult(name, instance_stats(g, p), conf, ["background", "foreground"]))
    return rep
