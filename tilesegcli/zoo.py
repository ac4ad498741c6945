"""The model zoo: model cards (what a named model is, how to feed it, where its weights are) and
``load_segmenter``, the one call that turns a card name or path into a ready ``Segmenter``.

Cards are static JSON data in the ``tilesegcli.models`` package (read with importlib.resources;
nothing heavy is imported here; inside tilesegcli, so no folder named ``models`` can shadow it). Users' own models (e.g. written by ``tileseg train``) use the same format and are
loaded by path: ``load_card("runs/nuclei/card.json")`` or ``--model runs/nuclei/``.

Card format (JSON object, ``"format": 1``)::

    name              str   model name ("aff-tiny.coco-instance"); bundled cards: = file stem
    description       str   one paragraph: data, task, resolution reasoning, caveats
    extends           str   optional: a bundled name or a card path (relative to this card) whose
                            fields this card inherits; objects (architecture, input, postprocess)
                            merge recursively; weights, backbone_weights, classes, metrics and
                            all other values are replaced as a whole; a card that sets mpp or
                            mpp_unit (and not mpp_nominal) does not inherit mpp_nominal
    task              "semantic" | "instance" | "panoptic"
    architecture      {"backbone": "aff_mini", "backbone_kwargs": {...},
                       "head": "mask2former", "head_kwargs": {"num_classes": K, ...}}
    classes           name of a shared class set in tilesegcli/models/_classes.json ("ade20k", "coco",
                      "cityscapes", "cityscapes-thing") or a list of {"name", "color": [r,g,b],
                      "thing": bool (optional)} or of plain names (colours then generated)
    background        "implicit": the list holds the K model classes and tileseg prepends
                      "background" at index 0 (model class k -> tileseg class k+1);
                      "class0": the list already starts with background (model class k -> k)
    instance_classes  optional "all" (default) | "thing": which classes may form instances
    input             {"mean": [r,g,b], "std": [r,g,b], "range": 255 (default; or 1 when mean/std
                       are given for 0..1 inputs), "size_divisibility": 32}; default: ImageNet
                       mean/std on the 0..255 scale
    train_resolution  [h, w] crop size used in training (px)
    mpp, mpp_unit     working pixel size; mpp_unit "um" (slides) or "m" (aerial)
    mpp_nominal       true when the model has no physical pixel size (natural-image models)
    tile_size, overlap, min_area   tiling defaults at the working resolution (px, px, px^2)
    postprocess       {"score_threshold", "top_k", "object_mask_threshold", "overlap_threshold",
                       "min_visible_fraction" (instance: drop masks less visible than that),
                       "cleanup_radius" (instance: >= 0 closes/fills/keeps the largest piece),
                       "mask_threshold" (instance: mask probability cut, default 0.5),
                       "flip_views" (instance: 1, 2, 4 or 8 passes over flipped copies of each
                       tile (8: also transposed), merged by mask voting; default 1 = one pass),
                       "fg_gate" (instance, heads with ``fg_head``: drop instances whose mean
                       foreground probability is below it; 0 = off),
                       "view_agreement" (instance, flip_views >= 4: views 2.. only on tiles whose
                       first two views agree less than this (instance F1); 0 = always all),
                       "hv_post" (instance, heads with ``hv_head``: the HoVer stage that cuts
                       instances holding several markers, gates, trims and adds; settings
                       "hv_split", "hv_edge", "hv_fg", "hv_min_marker", "hv_trim", "hv_gate",
                       "hv_add", see ``tilesegcli.nn.hv_split``; "hv_views": the HoVer maps
                       of the first k flip views only, 0 = all)}
    weights           {"url": str|null, "sha256": hex|null (null = unknown: verified by strict
                       loading), "size": bytes|null, "filename": str, "bundled": bool (file lives
                       next to the card), "format": "auto"|"detectron2"|"state_dict"|
                       "safetensors", "ignore_keys": [state-dict keys that are not model
                       parameters, e.g. "criterion.empty_weight"], "note": str}
    backbone_weights  optional, same shape: ImageNet backbone weights for fine-tuning
    licence           str (code + weights + training data terms)
    metrics           optional {metric name: value}; anything else is kept in ``extra``
"""

from __future__ import annotations

import colorsys
import dataclasses
import difflib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from tilesegcli.atomic import atomic_path
from tilesegcli.errors import ModelNotFoundError, UsageError
from tilesegcli.nn.hv_split import postprocess_defaults as hv_postprocess_defaults
from tilesegcli.segmenter import ClassInfo
from tilesegcli.specs import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from tilesegcli.segmenter import Segmenter

log = logging.getLogger(__name__)

#: the card `tileseg predict` and `tilesegcli.predict` use when no model is named
DEFAULT_MODEL = "aff-nuclei"
CARD_FORMAT = 1
TASKS = ("semantic", "instance", "panoptic")
# Short tags accepted after the size: "aff-mini.coco" -> "aff-mini.coco-instance".
TAG_ALIASES = {"coco": "coco-instance", "ade": "ade20k", "cityscapes": "cityscapes-panoptic"}
_KNOWN_KEYS = {
    "format", "name", "description", "extends", "task", "architecture", "classes", "background",
    "instance_classes", "input", "train_resolution", "mpp", "mpp_unit", "mpp_nominal",
    "tile_size", "overlap", "min_area", "postprocess", "weights", "backbone_weights", "licence",
    "metrics",
}
_OVERRIDABLE = ("tile_size", "overlap", "mpp", "mpp_unit", "min_area")
_POSTPROCESS_DEFAULTS = {"score_threshold": 0.5, "top_k": 100, "object_mask_threshold": 0.8,
                         "overlap_threshold": 0.8, "min_visible_fraction": 0.0,
                         "cleanup_radius": -1, "mask_threshold": 0.5, "flip_views": 1,
                         "fg_gate": 0.0, "view_agreement": 0.0, **hv_postprocess_defaults()}


class InvalidCardError(UsageError):
    """A model card exists but is malformed (bad JSON, missing or inconsistent fields)."""


@dataclass(frozen=True)
class WeightsSpec:
    url: str | None = None
    sha256: str | None = None
    filename: str | None = None
    bundled: bool = False
    size: int | None = None
    format: str = "auto"
    ignore_keys: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class ModelCard:
    """A parsed card (like timm's PretrainedCfg). ``classes[0]`` is always background."""

    name: str
    description: str
    task: str
    architecture: Mapping[str, Any]
    classes: tuple[ClassInfo, ...]
    thing_classes: tuple[int, ...]  # tileseg class indices (>= 1) that may form instances
    background: str  # "implicit" | "class0"
    mean: tuple[float, float, float]  # on the 0..255 scale
    std: tuple[float, float, float]
    size_divisibility: int
    train_resolution: tuple[int, int]
    mpp: float | None
    mpp_unit: str
    mpp_nominal: bool
    tile_size: int
    overlap: int
    min_area: int
    postprocess: Mapping[str, Any]
    weights: WeightsSpec
    backbone_weights: WeightsSpec | None
    licence: str
    metrics: Mapping[str, Any]
    source: str  # "bundled" or the card file path
    base_dir: str | None  # where `bundled: true` weight files live
    extra: Mapping[str, Any]
    raw: Mapping[str, Any]  # the merged JSON (provenance, fingerprint)

    @property
    def num_model_classes(self) -> int:
        return int(self.architecture.get("head_kwargs", {}).get("num_classes", len(self.classes)))

    @property
    def class_offset(self) -> int:
        """tileseg class index of model class 0 (1 with an implicit background)."""
        return 1 if self.background == "implicit" else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe card content (merged, ``extends`` resolved) with any overrides applied."""
        d = json.loads(json.dumps(_thaw(self.raw)))
        for k in _OVERRIDABLE:
            d[k] = getattr(self, k)
        d["postprocess"] = dict(self.postprocess)
        return d

    def fingerprint(self) -> str:
        """sha256 of the canonical card JSON: equal fingerprints = same model and defaults."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def __hash__(self) -> int:  # the mapping fields are read-only views; hash the content
        return hash(self.fingerprint())

    def with_overrides(self, **changes: Any) -> ModelCard:
        """Copy with tiling fields or postprocess keys changed; each change is logged."""
        fields: dict[str, Any] = {}
        post = dict(self.postprocess)
        for key, value in changes.items():
            if value is None:
                continue
            if key in _OVERRIDABLE:
                old = getattr(self, key)
                fields[key] = value
            elif key in post or key in _POSTPROCESS_DEFAULTS:
                old = post.get(key)
                post[key] = value
            else:
                raise UsageError(f"cannot override {key!r} of model {self.name} "
                                 f"(allowed: {', '.join(_OVERRIDABLE + tuple(post))})")
            if old != value:
                log.warning("model %s: %s %r overrides the card default %r", self.name, key,
                            value, old)
                if key in ("mpp", "mpp_unit"):
                    # a pixel size set by the user is a real one (same rule as `extends`)
                    fields["mpp_nominal"] = False
        return dataclasses.replace(self, postprocess=MappingProxyType(post), **fields)


# ---------------------------------------------------------------------------------- reading


def _models_dir() -> Path:
    return Path(str(resources.files("tilesegcli.models")))


@lru_cache(maxsize=1)
def _class_sets() -> dict[str, list]:
    return json.loads(resources.files("tilesegcli.models").joinpath("_classes.json").read_text("utf-8"))


def card_names() -> list[str]:
    """Names of the bundled cards, sorted."""
    return sorted(p.stem for p in _models_dir().glob("*.json") if not p.name.startswith("_"))


def list_cards() -> list[ModelCard]:
    """Every bundled card, sorted by name."""
    return [load_card(n) for n in card_names()]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ModelNotFoundError(f"cannot read model card {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise InvalidCardError(f"model card {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidCardError(f"model card {path} must be a JSON object")
    return data


# Replaced as a whole by a child card: a new weights file must not inherit the parent's checksum.
_REPLACED_WHOLE = frozenset({"weights", "backbone_weights", "classes", "metrics"})


def _merge(base: Mapping[str, Any], over: Mapping[str, Any], top: bool = False) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if top and k in _REPLACED_WHOLE:
            out[k] = v
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    if top and ("mpp" in over or "mpp_unit" in over) and "mpp_nominal" not in over:
        # a child giving its own pixel size (e.g. a natural-image model used on aerial images)
        # means it: the parent's "nominal" flag belonged to the parent's placeholder mpp
        out.pop("mpp_nominal", None)
    return out


def _bundled_name(text: str) -> str | None:
    names = card_names()
    if text in names:
        return text
    arch, _, tag = text.partition(".")
    alias = f"{arch}.{TAG_ALIASES.get(tag, tag)}"
    return alias if tag and alias in names else None


def _locate(name_or_path: str | os.PathLike) -> tuple[Path, bool]:
    """Return (card file, is_bundled). Plain names are bundled cards; anything that looks like a
    path (has a slash, ends in .json, or is not a bundled name but exists) is a user card."""
    text = os.fspath(name_or_path)
    looks_like_path = isinstance(name_or_path, os.PathLike) or text.endswith(".json") or (
        os.sep in text or "/" in text)
    if not looks_like_path and (name := _bundled_name(text)):
        return _models_dir() / f"{name}.json", True
    p = Path(text).expanduser()
    if p.is_dir():
        cand = p / "card.json"
        jsons = sorted(q for q in p.glob("*.json"))
        if cand.is_file():
            return cand, False
        if len(jsons) == 1:
            return jsons[0], False
        raise ModelNotFoundError(f"{p} is a directory without a card.json")
    if p.is_file():
        return p, False
    if looks_like_path:
        raise ModelNotFoundError(f"model card not found: {text}")
    close = difflib.get_close_matches(text, card_names(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    if text == DEFAULT_MODEL:
        hint += " (the default nuclei model is not bundled in this build; pass --model)"
    raise ModelNotFoundError(f"unknown model {text!r}{hint} (`tileseg models` lists them)")


def _load_raw(name_or_path: str | os.PathLike, seen: tuple[str, ...] = ()) -> tuple[dict, Path, bool]:
    path, bundled = _locate(name_or_path)
    key = str(path.resolve())
    if key in seen:
        raise InvalidCardError(f"model card {path}: 'extends' loops back to itself")
    data = _read_json(path)
    parent = data.get("extends")
    if parent:
        if not isinstance(parent, str):
            raise InvalidCardError(f"model card {path}: 'extends' must be a name or a path")
        ref: str | Path = parent
        if not bundled and (parent.endswith(".json") or "/" in parent):
            ref = (path.parent / parent)
        base, base_path, _ = _load_raw(ref, seen + (key,))
        for w in ("weights", "backbone_weights"):
            spec = base.get(w)
            if w not in data and isinstance(spec, dict) and spec.get("bundled") and spec.get("filename"):
                # inherited bundled weights stay the parent's file, not one beside this card
                base[w] = {**spec, "filename": str(base_path.parent.resolve() / spec["filename"])}
        data = _merge(base, data, top=True)
        data.pop("extends", None)
    return data, path, bundled


def load_card(name_or_path: str | os.PathLike | ModelCard) -> ModelCard:
    """Load a bundled card by name ("aff-mini.ade20k", "aff-mini.coco") or any card by path."""
    if isinstance(name_or_path, ModelCard):
        return name_or_path
    data, path, bundled = _load_raw(name_or_path)
    try:
        return card_from_dict(data, source="bundled" if bundled else str(path),
                              base_dir=str(path.parent))
    except InvalidCardError as e:
        raise InvalidCardError(f"model card {path}: {e}") from None


# ---------------------------------------------------------------------------------- parsing


def _auto_color(i: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)
    return (int(r * 255), int(g * 255), int(b * 255))


def _parse_classes(spec: Any) -> list[tuple[ClassInfo, bool | None]]:
    if isinstance(spec, str):
        sets = _class_sets()
        if spec not in sets or spec.startswith("_"):
            raise InvalidCardError(f"unknown class set {spec!r} (known: "
                                   f"{', '.join(k for k in sets if not k.startswith('_'))})")
        spec = sets[spec]
    if not isinstance(spec, list) or not spec:
        raise InvalidCardError("'classes' must be a class-set name or a non-empty list")
    out = []
    for i, c in enumerate(spec):
        if isinstance(c, str):
            out.append((ClassInfo(c, _auto_color(i)), None))
            continue
        if not isinstance(c, Mapping) or "name" not in c:
            raise InvalidCardError(f"class #{i} must be a name or an object with 'name'")
        color = c.get("color") or _auto_color(i)
        if len(color) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in color):
            raise InvalidCardError(f"class {c['name']!r}: color must be [r, g, b] in 0..255")
        thing = c.get("thing")
        out.append((ClassInfo(str(c["name"]), (color[0], color[1], color[2])),
                    None if thing is None else bool(thing)))
    return out


def _weights(spec: Any, what: str) -> WeightsSpec | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise InvalidCardError(f"'{what}' must be an object")
    url, filename = spec.get("url"), spec.get("filename")
    if not filename and url:
        filename = url.rstrip("/").rsplit("/", 1)[-1]
    if not filename:
        raise InvalidCardError(f"'{what}' needs a 'filename' (or a 'url')")
    sha = spec.get("sha256")
    if sha is not None and (len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha.lower())):
        raise InvalidCardError(f"'{what}.sha256' must be 64 hex digits or null")
    return WeightsSpec(url=url, sha256=sha.lower() if sha else None, filename=filename,
                       bundled=bool(spec.get("bundled", False)), size=spec.get("size"),
                       format=str(spec.get("format", "auto")),
                       ignore_keys=tuple(spec.get("ignore_keys", ())), note=spec.get("note", ""))


def _triple(v: Any, what: str) -> tuple[float, float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        raise InvalidCardError(f"'{what}' must be 3 numbers (R, G, B)")
    return (float(v[0]), float(v[1]), float(v[2]))


def card_from_dict(data: Mapping[str, Any], *, source: str = "<dict>",
                   base_dir: str | None = None) -> ModelCard:
    """Validate a card dictionary (``extends`` already resolved) into a ``ModelCard``."""
    for key in ("name", "task", "architecture", "classes", "tile_size", "weights"):
        if key not in data:
            raise InvalidCardError(f"missing field {key!r}")
    if int(data.get("format", CARD_FORMAT)) > CARD_FORMAT:
        raise InvalidCardError(f"card format {data['format']} is newer than this tileseg "
                               f"understands ({CARD_FORMAT}); upgrade tileseg")
    task = data["task"]
    if task not in TASKS:
        raise InvalidCardError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    arch = data["architecture"]
    if not isinstance(arch, Mapping):
        raise InvalidCardError("'architecture' must be an object")
    background = data.get("background", "implicit")
    if background not in ("implicit", "class0"):
        raise InvalidCardError("'background' must be 'implicit' or 'class0'")
    parsed = _parse_classes(data["classes"])
    if background == "implicit":
        parsed = [(ClassInfo("background", (0, 0, 0)), False)] + parsed
    classes = tuple(c for c, _ in parsed)
    n_model = arch.get("head_kwargs", {}).get("num_classes")
    expected = len(classes) - (1 if background == "implicit" else 0)
    if n_model is not None and int(n_model) != expected:
        raise InvalidCardError(f"head num_classes={n_model} but the card lists {expected} "
                               f"model classes (background={background})")
    which = data.get("instance_classes", "all")
    has_flags = any(t is not None for _, t in parsed[1:])
    if which == "thing" or (task == "panoptic" and has_flags):
        things = tuple(i for i, (_, t) in enumerate(parsed) if i > 0 and t)
    elif which == "all" or task == "panoptic":
        things = tuple(range(1, len(classes)))
    else:
        raise InvalidCardError("'instance_classes' must be 'all' or 'thing'")
    inp = data.get("input", {})
    scale = 255.0 / float(inp.get("range", 255))
    mean = tuple(v * scale for v in _triple(inp.get("mean", IMAGENET_MEAN), "input.mean"))
    std = tuple(v * scale for v in _triple(inp.get("std", IMAGENET_STD), "input.std"))
    if min(std) <= 0:
        raise InvalidCardError("input.std must be positive")
    tile, overlap = int(data["tile_size"]), int(data.get("overlap", 0))
    if tile <= 0 or not 0 <= overlap < tile:
        raise InvalidCardError(f"need tile_size > 0 and 0 <= overlap < tile_size "
                               f"(got {tile}, {overlap})")
    mpp = data.get("mpp")
    if mpp is not None and float(mpp) <= 0:
        raise InvalidCardError("mpp must be positive or null")
    unit = data.get("mpp_unit", "um")
    if unit not in ("um", "m"):
        raise InvalidCardError("mpp_unit must be 'um' or 'm'")
    weights = _weights(data["weights"], "weights")
    assert weights is not None
    tr = data.get("train_resolution", [tile, tile])
    post = _merge(_POSTPROCESS_DEFAULTS, data.get("postprocess", {}))
    return ModelCard(
        name=str(data["name"]), description=str(data.get("description", "")), task=task,
        architecture=_freeze(arch), classes=classes, thing_classes=things, background=background,
        mean=mean, std=std, size_divisibility=int(inp.get("size_divisibility", 32)),  # type: ignore[arg-type]
        train_resolution=(int(tr[0]), int(tr[1])),
        mpp=None if mpp is None else float(mpp), mpp_unit=unit,
        mpp_nominal=bool(data.get("mpp_nominal", False)), tile_size=tile, overlap=overlap,
        min_area=int(data.get("min_area", 0)), postprocess=MappingProxyType(post),
        weights=weights, backbone_weights=_weights(data.get("backbone_weights"), "backbone_weights"),
        licence=str(data.get("licence", "unknown")),
        metrics=_freeze(data.get("metrics", {})), source=source, base_dir=base_dir,
        extra=_freeze({k: v for k, v in data.items() if k not in _KNOWN_KEYS}),
        raw=_freeze(dict(data)),
    )


def _freeze(v: Any) -> Any:
    if isinstance(v, Mapping):
        return MappingProxyType({k: _freeze(x) for k, x in v.items()})
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def write_card(card: ModelCard | Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Validate and write a card atomically (temp name + os.replace). Returns the path."""
    data = card.to_dict() if isinstance(card, ModelCard) else _thaw(card)
    card_from_dict(data)  # validate before writing
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------ what a card is for

# Shared class sets of natural-image cards -> the images those models were trained on.
_CLASS_SET_DOMAINS = {
    "cityscapes": "street scenes (Cityscapes)",
    "cityscapes-thing": "street scenes (Cityscapes)",
    "coco": "everyday photos (COCO)",
    "ade20k": "indoor/outdoor scenes (ADE20K)",
}


def card_domain(card: ModelCard) -> str:
    """The kind of images a card's model was made for, from its class set and pixel size."""
    classes = card.raw.get("classes")
    if isinstance(classes, str) and classes in _CLASS_SET_DOMAINS:
        return _CLASS_SET_DOMAINS[classes]
    if card.mpp_nominal or card.mpp is None:
        return "natural images (no physical pixel size)"
    if card.mpp_unit == "m":
        return f"aerial/satellite imagery ({card.mpp:g} m/px)"
    return f"microscopy ({card.mpp:g} um/px)"


def licence_summary(text: str) -> str:
    """A few words for a table column; the card's full ``licence`` text is authoritative."""
    low = text.lower()
    words = []
    if "apple sample code" in low:
        words.append("Apple sample code")
    elif "apache-2.0" in low:
        words.append("Apache-2.0 code")
    if "non-commercial" in low:
        words.append("non-commercial")
    return ", ".join(words) or (text if len(text) <= 28 else text[:27] + "…")


# ---------------------------------------------------------------------------------- factory

# architecture["head"] -> "module:attr" of a class with from_card(card, weights=, device=).
_SEGMENTERS = {
    "mask2former": "tilesegcli.segmenters.aff_m2f:AFFSegmenter",
    "seaformer": "tilesegcli.segmenters.dense:SemanticSegmenter",
    "focal_fpn": "tilesegcli.segmenters.dense:SemanticSegmenter",
}


def load_segmenter(model: str | os.PathLike | ModelCard, *, weights: str | os.PathLike | None = None,
                   device: str = "auto", **overrides: Any) -> Segmenter:
    """Card name/path -> ready Segmenter (weights resolved, downloaded and verified if needed).

    ``overrides`` change tiling fields (tile_size, overlap, mpp, mpp_unit, min_area) or
    postprocess keys (score_threshold, top_k, ...); each change is logged as a warning.
    """
    import importlib

    card = load_card(model)
    if overrides:
        card = card.with_overrides(**overrides)
    head = card.architecture.get("head", "mask2former")
    if head not in _SEGMENTERS:
        raise InvalidCardError(f"model {card.name}: no segmenter for head {head!r} "
                               f"(known: {', '.join(_SEGMENTERS)})")
    module, attr = _SEGMENTERS[head].split(":")
    cls = getattr(importlib.import_module(module), attr)
    return cls.from_card(card, weights=weights, device=device)
