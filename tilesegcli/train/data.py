"""Training data: images + annotations resampled to the model's resolution, and patch sampling.

Owns :class:`DataItem` (where an image and its annotation are, at what µm/px, which group it
belongs to), :func:`load_item` (image and instances at the model's mpp), the built-in nuclei
manifest (MoNuSeg 2018 train XML, CPM-15, NuCLS) with its fixed validation split, and
:class:`PatchSampler`, which draws augmented fixed-size patches with per-instance masks from a
seeded ``numpy.random.Generator`` whose state is saved in checkpoints (exact resume).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tilesegcli.annotations import Annotation, read_annotation
from tilesegcli.errors import AnnotationError, SlideOpenError, UsageError
from tilesegcli.train.augment import augment_patch
from tilesegcli.train.pack import PACK_SUFFIX, read_pack


@dataclass(frozen=True)
class DataItem:
    """One training/validation image. ``group`` is the organ/patient key used for splitting."""

    image: str
    annotation: str
    mpp: float
    group: str = ""
    name: str = ""
    #: split touching objects apart: binary masks by watershed (``annotations.split_binary``),
    #: colour/label maps into connected components within each label
    split_touching: bool = False

    @property
    def key(self) -> str:
        return self.name or Path(self.image).stem


@dataclass
class Loaded:
    """An image and its instances at the model's resolution."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    ann: Annotation


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from PNG/JPEG/TIFF (alpha dropped, grey expanded)."""
    p = Path(path)
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(str(p))
        else:
            from PIL import Image

            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise SlideOpenError(f"{p}: cannot read image ({e})") from e
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise SlideOpenError(f"{p}: expected an RGB image, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def resize_rgb(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-averaging (downsampling) / bicubic (upsampling) resize of an RGB uint8 image."""
    from PIL import Image

    h, w = shape
    if (h, w) == img.shape[:2]:
        return img
    down = h < img.shape[0]
    res = Image.BOX if down else Image.BICUBIC
    return np.asarray(Image.fromarray(img).resize((w, h), res))


def load_item(item: DataItem, mpp: float) -> Loaded:
    """Read ``item`` and resample image + instances from item.mpp to ``mpp`` (an item whose
    image is a pack, ``train/pack.py``, is read from it as it was packed)."""
    if item.image.lower().endswith(PACK_SUFFIX):
        _, image, ann = read_pack(item.image, mpp)
        return Loaded(item.key, image, ann)
    img = read_rgb(item.image)
    scale = item.mpp / mpp
    shape = (int(round(img.shape[0] * scale)), int(round(img.shape[1] * scale)))
    ann = read_annotation(item.annotation, img.shape[:2], scale=scale,
                          split_touching=item.split_touching)
    if ann.shape != shape:
        raise AnnotationError(f"{item.annotation}: resampled to {ann.shape}, image to {shape}")
    return Loaded(item.key, resize_rgb(img, shape), ann)


# ----------------------------------------------------------------------------- nuclei manifest
MONUSEG_MPP = 0.2527  # MicronsPerPixel in the MoNuSeg XML
NUCLEI_VAL = (  # one image per organ, each a different patient; never trained on
    "TCGA-50-5931-01Z-00-DX1",  # lung
    "TCGA-E2-A1B5-01Z-00-DX1",  # breast
    "TCGA-B0-5710-01Z-00-DX1",  # kidney
    "TCGA-G9-6362-01Z-00-DX1",  # prostate
)
_MONUSEG_ORGAN = {"21": "lung", "50": "lung", "A7": "breast", "AR": "breast", "E2": "breast",
                  "B0": "kidney", "CH": "prostate", "G9": "prostate", "NH": "colon"}


def nuclei_manifest(root: str | Path, *, monuseg_binary: bool = False, monuseg_color: bool = False
                    ) -> tuple[list[DataItem], list[DataItem]]:
    """(train, val) items of the bundled nuclei data under ``root`` (../shared/data/nuclei).

    * MoNuSeg 2018 train, the 13 images with instance XML (40x, 0.2527 µm/px); the 4 images in
      NUCLEI_VAL (lung, breast, kidney, prostate; 4 patients) are the validation split.
    * ``monuseg_binary``: also the 17 MoNuSeg training images that only have a binary mask
      (``binary_masks_ykrmm``), touching nuclei split by watershed (``split_binary``; on the 4
      validation images that split scores PQ 0.85 against their XML). Never a validation patient.
    * ``monuseg_color``: the same 17 images from their colour instance masks instead
      (``color_masks_ykrmm``: one colour per nucleus, split into connected components within a
      colour; DQ 0.99-1.00 against the XML where both exist). Takes precedence over the binary ones.
    * CPM-15: image01-07 at 20x (taken as 0.5 µm/px), image08-15 at 40x (0.25 µm/px);
      image04/05 masks are swapped in the source, fixed here.
    * NuCLS: 10 breast crops at 40x (0.25 µm/px).
    """
    r = Path(root)
    train: list[DataItem] = []
    val: list[DataItem] = []
    mon = r / "monuseg2018" / "train"
    for xml in sorted((mon / "annotations").glob("*.xml")):
        img = mon / "images" / f"{xml.stem}.tif"
        organ = _MONUSEG_ORGAN.get(xml.stem.split("-")[1], "other")
        it = DataItem(str(img), str(xml), MONUSEG_MPP, f"monuseg:{organ}:{xml.stem[:12]}", xml.stem)
        (val if xml.stem in NUCLEI_VAL else train).append(it)
    if monuseg_binary or monuseg_color:
        have_xml = {Path(i.annotation).stem for i in train + val}
        val_patients = {n[:12] for n in NUCLEI_VAL}
        folder = "color_masks_ykrmm" if monuseg_color else "binary_masks_ykrmm"
        for png in sorted((mon / folder).glob("*.png")):
            if png.stem in have_xml or png.stem[:12] in val_patients:
                continue
            img = mon / "images" / f"{png.stem}.tif"
            organ = _MONUSEG_ORGAN.get(png.stem.split("-")[1], "other")
            train.append(DataItem(str(img), str(png), MONUSEG_MPP,
                                  f"monuseg:{organ}:{png.stem[:12]}", png.stem, split_touching=True))
    cpm = r / "cpm15"
    swap = {"image04": "image05", "image05": "image04"}
    for png in sorted(cpm.glob("image[0-9][0-9].png")):
        n = int(png.stem[5:])
        mask = cpm / f"{swap.get(png.stem, png.stem)}_mask.txt"
        train.append(DataItem(str(png), str(mask), 0.5 if n <= 7 else 0.25, "cpm15:brain",
                              f"cpm15-{png.stem}"))
    nuc = r / "nucls" / "train"
    for png in sorted((nuc / "images").glob("*.png")):
        lab = nuc / "labels" / f"{png.stem}.npy"
        train.append(DataItem(str(png), str(lab), 0.25, "nucls:breast", f"nucls-{png.stem}"))
    if not train:
        raise UsageError(f"no nuclei training data under {r}")
    return train, val


def items_from_json(path: str | Path) -> list[DataItem]:
    """A list of {"image", "annotation", "mpp", ["group"], ["name"], ["split_touching"]} objects
    (paths relative to the file)."""
    p = Path(path)
    try:
        rows = json.loads(p.read_text())
        out = []
        for r in rows:
            img, ann = Path(r["image"]), Path(r["annotation"])
            out.append(DataItem(str(img if img.is_absolute() else p.parent / img),
                                str(ann if ann.is_absolute() else p.parent / ann),
                                float(r["mpp"]), str(r.get("group", "")), str(r.get("name", "")),
                                bool(r.get("split_touching", False))))
        return out
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{p}: bad data list ({e})") from e


def items_to_json(items: list[DataItem]) -> list[dict]:
    return [asdict(i) for i in items]


# ----------------------------------------------------------------------------- patches
@dataclass
class Patch:
    image: np.ndarray  # (t, t, 3) uint8
    masks: np.ndarray  # (K, t, t) bool
    classes: np.ndarray  # (K,) int64, >= 1
    valid: np.ndarray  # (t, t) bool: pixels with labels (inside ROI and the image)


class PatchSampler:
    """Random augmented patches of ``tile`` px from loaded images (weighted by area).

    Scale jitter crops ``tile * s`` px (s in ``scale_range``) and resizes to ``tile``; the crop
    centre lies inside the ROI when the annotation has one. Instances with fewer than
    ``min_area`` px in the patch are dropped from the targets (but stay ``valid``).
    """

    def __init__(self, data: list[Loaded], tile: int, seed: int = 0,
                 scale_range: tuple[float, float] = (0.8, 1.25), min_area: int = 4,
                 stain_jitter: float = 0.05, colour_jitter: float = 0.1) -> None:
        if not data:
            raise UsageError("no training images")
        self.data, self.tile = data, tile
        self.scale_range, self.min_area = scale_range, min_area
        self.stain_jitter, self.colour_jitter = stain_jitter, colour_jitter
        area = np.array([d.image.shape[0] * d.image.shape[1] for d in data], np.float64)
        self.p = area / area.sum()
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def sample(self) -> Patch:
        rng = self.rng
        d = self.data[int(rng.choice(len(self.data), p=self.p))]
        h, w = d.image.shape[:2]
        s = float(np.exp(rng.uniform(*np.log(self.scale_range))))
        c = max(2, int(round(self.tile * s)))
        roi = d.ann.roi
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if roi is not None and roi.any():
            ys, xs = np.nonzero(roi)
            j = int(rng.integers(len(ys)))
            cy, cx = ys[j] + rng.uniform(), xs[j] + rng.uniform()
        y0 = int(np.clip(round(cy - c / 2), min(0, h - c), max(0, h - c)))
        x0 = int(np.clip(round(cx - c / 2), min(0, w - c), max(0, w - c)))
        img, lab, valid = _crop(d.image, d.ann.labels, roi, y0, x0, c)
        if c != self.tile:
            from tilesegcli.annotations import resize_labels

            img = _resize_bilinear(img, self.tile)
            lab = resize_labels(lab, (self.tile, self.tile))
            valid = resize_labels(valid.astype(np.int64), (self.tile, self.tile)) > 0
        img, lab, valid = augment_patch(img, lab, valid, rng, self.stain_jitter, self.colour_jitter)
        ids, counts = np.unique(lab, return_counts=True)
        keep = ids[(ids > 0) & (counts >= self.min_area)]
        masks = lab[None] == keep[:, None, None]
        classes = d.ann.classes[keep - 1] if len(keep) else np.zeros(0, np.int64)
        return Patch(img, masks, classes.astype(np.int64), valid)

    def batch(self, n: int) -> list[Patch]:
        return [self.sample() for _ in range(n)]


def _crop(img: np.ndarray, lab: np.ndarray, roi: np.ndarray | None, y0: int, x0: int, c: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """c x c crop at (y0, x0); parts outside the image are reflected (image) / unlabeled."""
    h, w = lab.shape
    out_img = np.zeros((c, c, 3), np.uint8)
    out_lab = np.zeros((c, c), lab.dtype)
    valid = np.zeros((c, c), bool)
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + c, h), min(x0 + c, w)
    sl = (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))
    out_img[sl] = img[ys:ye, xs:xe]
    out_lab[sl] = lab[ys:ye, xs:xe]
    valid[sl] = True if roi is None else roi[ys:ye, xs:xe]
    if roi is not None:
        out_lab[~valid] = 0
    return out_img, out_lab, valid


def _resize_bilinear(img: np.ndarray, t: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((t, t), Image.BILINEAR))
