"""Output writers: streaming GeoJSON (QuPath, CRS-aware, .gz, GeoJSONSeq) and OME-Zarr labels."""

from __future__ import annotations

from tilesegcli.writers.geojson import FORMATS, FeatureWriter, format_from_path, open_writer
from tilesegcli.writers.labels import LabelsWriter, open_labels_writer

__all__ = [
    "FORMATS",
    "FeatureWriter",
    "LabelsWriter",
    "format_from_path",
    "open_labels_writer",
    "open_writer",
]
