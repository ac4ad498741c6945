"""Output writers: streaming GeoJSON (QuPath, CRS-aware, .gz, GeoJSONSeq) and OME-Zarr labels."""

from __future__ import annotations

from tilesegcli.writers.geojson import FeatureWriter, open_writer
from tilesegcli.writers.labels import LabelsWriter, open_labels_writer

__all__ = [
    "FeatureWriter",
    "LabelsWriter",
    "open_labels_writer",
    "open_writer",
]
