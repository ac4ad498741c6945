"""tileseg: tiled segmentation of whole-slide images and GeoTIFFs into polygons.

Importing this package is cheap: heavy dependencies (torch, zarr, openslide, shapely)
are imported lazily by the modules that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "predict"]


def predict(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy re-export
    """Run the pipeline on one or more inputs; see :func:`tilesegcli.pipeline.predict`."""
    from tilesegcli.pipeline import predict as _predict

    return _predict(*args, **kwargs)
