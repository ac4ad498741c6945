"""The run's value types: ``RunConfig`` (every option of ``tileseg predict``) and
``SlideResult`` (what one input's run reports). No I/O, nothing heavy imported: the CLI, the
pipeline, the merge step and the summary writer all share these."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

FORMATS = ("geojson", "geojson.gz", "geojsonseq", "qupath")


@dataclass
class RunConfig:
    """Every option of ``tileseg predict`` (CLI flags map 1:1; None = model-card default)."""

    output: Path | None = None
    outdir: Path | None = None
    model: str = "aff-nuclei"
    weights: str | None = None
    mpp: float | None = None
    backend: str = "auto"
    roi: Path | None = None
    no_mask: bool = False
    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int = 8
    num_workers: int = 2
    device: str = "auto"
    flips: int | None = None  # test-time flip passes of instance cards (None = the card's)
    workdir: Path | None = None
    shard: tuple[int, int] = (0, 1)
    overwrite: bool = False
    format: str | None = None
    labels: Path | None = None
    min_area: float | None = None
    simplify: float | None = None
    quiet: bool = True
    stream_merge: bool = True  # stitch while tiles are computed (single-shard runs)
    command_line: list[str] | None = None

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "command_line"}

    def output_options(self, fmt: str) -> dict[str, Any]:
        """The options that shape the written output (they enter its fingerprint)."""
        return output_options(fmt, self.min_area, self.simplify, self.labels)


def output_options(fmt: str, min_area: float | None, simplify: float | None,
                   labels: Path | None) -> dict[str, Any]:
    return {"format": fmt, "min_area": min_area, "simplify": simplify,
            "labels": str(labels) if labels else None}


@dataclass
class SlideResult:
    input: str
    status: str = "pending"  # done | skipped | waiting (other shards) | failed
    output: str | None = None
    store: str | None = None
    error: str | None = None
    tiles_total: int = 0
    tiles_selected: int = 0
    tiles_shard: int = 0
    tiles_computed: int = 0
    tiles_done: int = 0
    objects: int | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped", "waiting")
