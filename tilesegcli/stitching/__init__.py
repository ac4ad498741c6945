"""Stitching: per-tile model outputs -> global objects, each exactly once (instances) and
seam-free per-class regions with holes (semantic). Geometry in working-resolution px."""

from __future__ import annotations

from tilesegcli.stitching.instances import InstanceStitcher, stitch_instances
from tilesegcli.stitching.semantic import SemanticStitcher, stitch_semantic
from tilesegcli.stitching.types import StitchedObject, StitchStats

__all__ = ["InstanceStitcher", "SemanticStitcher", "StitchStats", "StitchedObject",
           "stitch_instances", "stitch_semantic"]
