"""What a run decides about one input before any tile runs: which model (``--model``), which
pyramid level and resampling (the segmenter's mpp vs the input's), the tile grid, which tiles
touch foreground, and the run fingerprint that makes a tile store refuse another run.

Resolution rules: a segmenter with a physical pixel size runs at that size, and its unit must
match the input's (a µm/px model on an m/px GeoTIFF is a one-line UsageError). A segmenter with
no pixel size (``mpp=None``) or a *nominal* one (natural-image models: ``mpp_nominal`` on the
segmenter or its model card) runs on the input's own level-0 pixels, in any unit; on a
microscopy image (a µm/px pixel size) it is refused unless ``--force`` (a street-scene model
finds no nuclei).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tilesegcli.config import RunConfig
from tilesegcli.errors import UsageError
from tilesegcli.resolution import level0_mpp
from tilesegcli.segmenter import Segmenter
from tilesegcli.specs import SlideInfo
from tilesegcli.store import input_identity

log = logging.getLogger("tileseg")

@dataclass
class Plan:
    """What run_slide decided about one input before any tile runs."""

    grid: Any  # GridSpec
    selected: Any  # (rows, cols) bool: tiles whose read window touches foreground
    info: SlideInfo  # the input as the run sees it: ``mpp`` = the level-0 pixel size used
    mask_source: str
    slide_meta: dict[str, Any]
    native: bool = False  # the model runs on level-0 pixels (no physical pixel size)


def load_model(config: RunConfig) -> Segmenter:
    """``simple`` (tiny test net), ``package.module:factory`` (your own), else a model card."""
    from tilesegcli.device import resolve_device

    device = resolve_device(config.device)
    name = config.model
    w = config.weights
    if w is not None and "://" not in w and not Path(w).expanduser().is_file():
        raise UsageError(f"--weights {w}: no such file")
    if w is not None and name == "simple":
        raise UsageError("--weights does not apply to --model simple (it has no weights)")
    if name == "simple" or (":" in name and not Path(name).exists()):
        if config.flips is not None or config.view_agreement is not None:
            raise UsageError(f"--flips and --view-agreement apply to model cards, not to "
                             f"--model {name}")
        if name == "simple":
            from tilesegcli.segmenters.simple import SimpleSegmenter

            return SimpleSegmenter(device=device)
        import importlib

        mod, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise UsageError(f"--model {name}: cannot import {attr} from {mod}: {e}") from None
        return factory(device=device, weights=config.weights)
    from tilesegcli.zoo import load_segmenter

    return load_segmenter(name, weights=config.weights, device=device, flip_views=config.flips,
                          view_agreement=config.view_agreement)


def open_input(src: Path, backend: str) -> Any:
    from tilesegcli.readers import open_reader

    return open_reader(src, backend)


def mpp_is_nominal(segmenter: Segmenter) -> bool:
    """The segmenter's mpp is a placeholder, not a physical pixel size (natural-image model)."""
    card = getattr(segmenter, "card", None)
    return bool(getattr(segmenter, "mpp_nominal", False) or getattr(card, "mpp_nominal", False))


def _check_domain(info: Any, mpp0: float | None, model: str, card: Any, force: bool) -> None:
    """A natural-image model (nominal pixel size: street scenes, photos) on a microscopy image
    (a physical µm/px pixel size) gives meaningless objects: refused unless ``force``."""
    if mpp0 is None or info.mpp_unit != "um":
        return  # a plain photo, or a GeoTIFF: what natural-image cards are used on
    if card is not None and hasattr(card, "raw"):
        from tilesegcli.zoo import card_domain

        domain = card_domain(card)
    else:
        domain = "natural images"
    name = Path(info.path).name
    what = (f"model {model} was trained on {domain} and has no physical pixel size, "
            f"but {name} is a microscopy image ({mpp0:g} um/px)")
    if not force:
        raise UsageError(f"{what}: its objects would be meaningless; use a microscopy model "
                         "(e.g. aff-nuclei) or pass --force to run it anyway")
    log.warning("%s: %s; running anyway (--force) on level-0 pixels", name, what)


def check_domains_before_loading(paths: list[Path], config: RunConfig) -> None:
    """The domain refusal of ``_check_domain`` for a model card, before its weights are loaded
    (or downloaded): only the card and each input's header are read. Inputs that do not open
    are left to their own run, which reports them."""
    name = config.model
    if config.force or name == "simple" or (":" in name and not Path(name).exists()):
        return
    from tilesegcli.errors import TilesegError
    from tilesegcli.zoo import load_card

    card = load_card(name)
    if not card.mpp_nominal or card.mpp is None:
        return

    for p in paths:
        try:
            reader = open_input(p, config.backend)
        except (TilesegError, OSError):
            continue
        try:
            info = reader.info
        finally:
            reader.close()
        _check_domain(info, level0_mpp(info, config.mpp, required=False), card.name, card,
                      force=False)


def plan_slide(reader: Any, segmenter: Segmenter, config: RunConfig) -> Plan:
    from tilesegcli.foreground import foreground_mask, load_roi
    from tilesegcli.resolution import choose_level, work_size
    from tilesegcli.tiling import make_grid

    info = reader.info
    native = segmenter.mpp is None or mpp_is_nominal(segmenter)
    if native:  # no physical pixel size: run on level 0 as is
        level, ds, scale = 0, 1.0, 1.0
    else:
        level, ds, scale = choose_level(info, float(segmenter.mpp), config.mpp,
                                        target_unit=segmenter.mpp_unit, model=segmenter.name)
    mpp0 = level0_mpp(info, config.mpp, required=not native)
    if native and segmenter.mpp is not None:
        _check_domain(info, mpp0, segmenter.name, getattr(segmenter, "card", None),
                      config.force)
        log.info("%s: model %s has a nominal pixel size (natural-image model): running on "
                 "the input's level-0 pixels", Path(info.path).name, segmenter.name)
    width, height = work_size(info, ds)
    tile = config.tile_size or int(segmenter.tile_size)
    overlap = config.overlap if config.overlap is not None else int(segmenter.overlap)
    if config.tile_size and config.tile_size != segmenter.tile_size:
        log.warning("tile size %d overrides the model's %d", tile, segmenter.tile_size)
    try:
        grid = make_grid(width, height, tile, overlap, level=level, downsample=ds,
                         level_scale=scale)
    except ValueError as e:
        raise UsageError(str(e)) from None
    roi = load_roi(config.roi, info) if config.roi is not None else None
    if config.no_mask and roi is None:
        fg, source = None, "none"
    else:
        fg = foreground_mask(reader, mode="none" if config.no_mask else "auto", roi=roi)
        source = fg.source
    selected = select_tiles(fg, grid)
    meta = {k: v for k, v in asdict_info(info).items() if k != "properties"}
    meta["mpp_effective"] = mpp0  # the store keeps the file's mpp; writers get this one
    return Plan(grid=grid, selected=selected, info=replace(info, mpp=mpp0), mask_source=source,
                slide_meta=meta, native=native)


def select_tiles(fg: Any, grid: Any) -> Any:
    """(rows, cols) bool of tiles whose read window touches foreground. Vectorised over the
    grid (no TileSpec per tile), so a 100k x 100k slide's 200k-tile grid costs a few MB."""
    import numpy as np

    from tilesegcli.foreground import foreground_boxes

    if fg is None:
        return np.ones((grid.rows, grid.cols), dtype=bool)
    ds, t, s = grid.downsample, grid.tile_px, grid.stride_px
    ys, xs = np.meshgrid(np.arange(grid.rows) * s, np.arange(grid.cols) * s, indexing="ij")
    n = grid.rows * grid.cols
    boxes = np.stack([xs.ravel() * ds, ys.ravel() * ds, np.full(n, t * ds), np.full(n, t * ds)], 1)
    keep = foreground_boxes(fg.mask, fg.downsample, boxes)
    if fg.roi is not None and keep.any():
        import shapely

        idx = np.flatnonzero(keep)
        b = boxes[idx]
        geoms = shapely.box(b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3])
        keep[idx] = shapely.intersects(geoms, fg.roi)
    return keep.reshape(grid.rows, grid.cols)


def asdict_info(info: Any) -> dict[str, Any]:
    from dataclasses import asdict

    from tilesegcli.provenance import jsonable

    return jsonable(asdict(info))


def weights_sha(segmenter: Segmenter) -> str | None:
    sha = getattr(segmenter, "weights_sha256", None)
    if sha:
        return str(sha)
    card = getattr(segmenter, "card", None)
    w = getattr(card, "weights", None)
    return getattr(w, "sha256", None)


def fingerprint(src: Path, segmenter: Segmenter, plan: Plan, config: RunConfig) -> dict[str, Any]:
    """What must match for a tile store to be resumed by this run."""
    import hashlib

    from tilesegcli.store import grid_to_dict

    roi_sha = hashlib.sha256(Path(config.roi).read_bytes()).hexdigest() if config.roi else None
    return {
        "model": segmenter.name,
        "weights_sha256": weights_sha(segmenter),
        "task": segmenter.task,
        "classes": [c.name for c in segmenter.classes],
        "target_mpp": None if plan.native else segmenter.mpp,
        "mpp0": plan.info.mpp,
        "backend": plan.slide_meta.get("backend"),
        "tiling": grid_to_dict(plan.grid),
        "mask": {"no_mask": config.no_mask, "roi_sha256": roi_sha, "source": plan.mask_source},
        "input": input_identity(src),
    }


def class_dicts(segmenter: Segmenter) -> list[dict[str, Any]]:
    return [{"name": c.name, "color": [int(v) for v in c.color]} for c in segmenter.classes]


def model_meta(segmenter: Segmenter) -> dict[str, Any]:
    from tilesegcli.provenance import jsonable

    card = getattr(segmenter, "card", None)
    if card is not None and hasattr(card, "to_dict"):
        card = card.to_dict()
    return jsonable({"name": segmenter.name, "task": segmenter.task, "mpp": segmenter.mpp,
                     "mpp_unit": segmenter.mpp_unit, "mpp_nominal": mpp_is_nominal(segmenter),
                     "tile_size": segmenter.tile_size, "overlap": segmenter.overlap,
                     "weights_sha256": weights_sha(segmenter), "card": card,
                     "params": getattr(segmenter, "params", None)})
