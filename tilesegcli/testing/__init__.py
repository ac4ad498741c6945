"""Test support shipped with the package: ``synthetic`` (slides and GeoTIFFs built in code with
fixed seeds) and ``oracle`` (a segmenter whose answer is known, for stitching invariants). Not
used by the pipeline itself."""
