"""Adapters that turn a network into a tileseg ``Segmenter`` (the protocol in
``tilesegcli.segmenter``): ``aff_m2f`` (AFF + Mask2Former cards: instance, semantic, panoptic),
``dense`` (dense semantic networks: SeaFormer, Focal + FPN) and ``simple`` (a tiny classical
segmenter for tests and examples). Import the module you need; nothing is imported here."""
