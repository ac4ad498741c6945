"""Stitching: per-tile model outputs -> global objects, each exactly once (instances) and
seam-free per-class regions with holes (semantic). Geometry in working-resolution px."""

from __future__ import annotations

from tilesegcli.stitching.instances import stitch_instances
from tilesegcli.stitching.semantic import stitch_semantic
from tilesegcli.stitching.types import StitchedObject, StitchStats

__all__ = ["StitchStats", "StitchedObject", "stitch_instances", "stitch_semantic"]
