"""Value types of the stitching stage: the objects it emits and the counters it keeps."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry


@dataclass
class StitchedObject:
    """One output object.

    geometry: shapely Polygon/MultiPolygon, working-resolution px (pixel edges, origin top-left)
    until an ``OutputTransform`` maps it to level-0 px or the CRS.
    kind: "detection" (instances) or "annotation" (semantic regions).
    merged: True when the object was assembled from the core crops of several tiles (every tile
    that saw it cut it), False when one tile saw it whole and owns it.
    """

    geometry: BaseGeometry
    class_id: int
    score: float
    kind: str = "detection"
    merged: bool = False
    measurements: dict[str, float] | None = None


@dataclass
class StitchStats:
    """Counters reported in the run summary (``as_dict()``)."""

    tiles: int = 0
    objects: int = 0  # emitted objects
    owned: int = 0  # emitted from the single tile that saw them whole
    merged: int = 0  # assembled from several tiles' core crops (cut by every tile)
    seam_groups: int = 0  # objects resolved through the seam pool (owned or merged)
    duplicate_views: int = 0  # per-tile views dropped because another tile owns the object
    small_dropped: int = 0  # below min_area_px
    pending_peak: int = 0  # most seam views/regions held at once (bounded band memory)
    regions: int = 0  # semantic polygons emitted
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
