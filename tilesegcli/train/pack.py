"""Training items packed into one small file each, to carry a training set where its source
files cannot go (a GPU machine is sent 64 MiB; MoNuSeg's TIFFs and XML alone are 107 MB).

A pack (``.npz``) holds one item already at the model's resolution: the image as JPEG bytes
(quality 95, no chroma subsampling: a MoNuSeg item in 0.72 MB on average instead of 3 MB),
the instance labels, their classes and the annotated region, so reading it back needs only numpy
and Pillow and repeats none of the annotation parsing (watershed splits, XML rasterisation).
A list entry whose ``image`` is a ``.npz`` is read from its pack (``data.load_item``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tilesegcli.annotations import Annotation
from tilesegcli.atomic import atomic_path
from tilesegcli.errors import AnnotationError, UsageError

PACK_SUFFIX = ".npz"
JPEG_QUALITY = 95


def write_pack(path: str | Path, name: str, image: np.ndarray, ann: Annotation, mpp: float
               ) -> int:
    """Write one item; returns the file's size in bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    arrays = {"jpeg": np.frombuffer(buf.getvalue(), np.uint8),
              "labels": np.asarray(ann.labels, np.int32),
              "classes": np.asarray(ann.classes, np.int64),
              "class_names": np.asarray(ann.class_names, dtype=str),
              "mpp": np.float64(mpp), "name": np.asarray(name)}
    if ann.roi is not None:
        arrays["roi"] = np.asarray(ann.roi, bool)
    p = Path(path)
    with atomic_path(p) as tmp, open(tmp, "wb") as f:  # a file object: no ".npz" appended
        np.savez_compressed(f, **arrays)
    return p.stat().st_size


def read_pack(path: str | Path, mpp: float) -> tuple[str, np.ndarray, Annotation]:
    """(name, image, annotation) of a pack; ``mpp`` must be the pack's own."""
    from PIL import Image

    try:
        with np.load(str(path), allow_pickle=False) as z:
            got = float(z["mpp"])
            if abs(got - mpp) > 1e-6 * max(got, mpp):
                raise UsageError(f"{path}: packed at {got} µm/px, the model wants {mpp}: pack again")
            with Image.open(io.BytesIO(z["jpeg"].tobytes())) as im:
                image = np.asarray(im.convert("RGB"))
            ann = Annotation(z["labels"].astype(np.int32), z["classes"].astype(np.int64),
                             [str(c) for c in z["class_names"]],
                             z["roi"] if "roi" in z.files else None)
            name = str(z["name"])
    except (OSError, KeyError, ValueError) as e:
        raise AnnotationError(f"{path}: not a readable training pack ({e})") from e
    if ann.labels.shape != image.shape[:2]:
        raise AnnotationError(f"{path}: labels {ann.labels.shape} vs image {image.shape[:2]}")
    return name, image, ann
