"""The output formats of ``tileseg predict --format``: their names, the suffix an output named
after its input gets, and telling the format from a file name. Pure data and string rules, shared
by the options, the output planning and the writers."""

from __future__ import annotations

from pathlib import Path

from tilesegcli.errors import UsageError

#: every value of ``--format`` (``qupath`` = a GeoJSON FeatureCollection as QuPath imports it)
FORMATS = ("geojson", "geojson.gz", "geojsonseq", "qupath")

#: the suffix of ``<outdir>/<input stem><suffix>`` for each format
SUFFIX = {"geojson": ".geojson", "geojson.gz": ".geojson.gz", "geojsonseq": ".geojsonl",
          "qupath": ".geojson"}


def format_from_path(path: str | Path) -> str:
    """Guess the format from the file name (``-`` -> qupath)."""
    name = str(path).lower()
    if name == "-" or name.endswith((".json", ".qupath.geojson")):
        return "qupath"
    if name.endswith((".geojson.gz", ".json.gz")):
        return "geojson.gz"
    if name.endswith((".geojsons", ".geojsonl", ".geojsonseq", ".ndjson")):
        return "geojsonseq"
    if name.endswith(".geojson"):
        return "geojson"
    raise UsageError(f"cannot tell the output format of {path}; use --format {'|'.join(FORMATS)}")
