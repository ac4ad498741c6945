"""A small real convolutional Segmenter of configurable cost, for tests and pipeline benchmarks.

``SimpleSegmenter`` runs a real torch conv net (``depth`` 3x3 conv layers of ``width`` channels,
fixed-seed random init) on every tile. Its output is dominated by a fixed "stain darkness" branch
(dark pixels -> foreground) so that it finds the dark blobs of synthetic slides and real nuclei,
while the random trunk adds real compute with a small weight. Instances are the connected
components of the foreground (scipy), class = 1, score = mean foreground probability.
It implements the :class:`tilesegcli.segmenter.Segmenter` protocol and is what the API example
uses to show how to bring your own model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from tilesegcli.segmenter import ClassInfo, TileResult, drop_small_labels


def _build_net(width: int, depth: int, num_classes: int, seed: int):  # -> torch.nn.Module
    import torch
    from torch import nn

    class DarkNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            cin = 3
            for _ in range(depth):
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True)]
                cin = width
            self.trunk = nn.Sequential(*layers)
            self.head = nn.Conv2d(cin, num_classes, 1)
            # fixed darkness branch: logit_fg = gain * (threshold - gray)
            self.gain = 24.0
            self.threshold = 0.55

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B,3,H,W) in [0,1]
            trunk = self.head(self.trunk(x)) * 0.01
            gray = x.mean(dim=1, keepdim=True)
            fg = self.gain * (self.threshold - gray)
            base = torch.cat([-fg] + [fg] * (trunk.shape[1] - 1), dim=1)
            return base + trunk

    g = torch.Generator().manual_seed(seed)
    net = DarkNet()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / max(1, p[0].numel()) ** 0.5)
    return net.eval()


class SimpleSegmenter:
    """Tiny real conv net Segmenter. ``task`` is "instance", "semantic" or "panoptic"."""

    def __init__(
        self,
        *,
        task: str = "panoptic",
        width: int = 8,
        depth: int = 2,
        tile_size: int = 256,
        overlap: int = 32,
        mpp: float | None = 0.5,
        mpp_unit: str = "um",
        mpp_nominal: bool = False,
        min_size_px: int = 4,
        seed: int = 0,
        device: str = "cpu",
        name: str = "simple",
    ) -> None:
        if task not in ("instance", "semantic", "panoptic"):
            raise ValueError(f"task must be instance|semantic|panoptic, got {task!r}")
        self.name = name
        self.task = task
        self.classes: Sequence[ClassInfo] = (
            ClassInfo("background", (0, 0, 0)),
            ClassInfo("nucleus", (220, 40, 40)),
        )
        self.mpp = mpp
        self.mpp_unit = mpp_unit
        self.mpp_nominal = mpp_nominal  # a natural-image model: runs on the input's own pixels
        self.tile_size = tile_size
        self.overlap = overlap
        self.min_size_px = min_size_px
        self.device = device
        self.net = _build_net(width, depth, len(self.classes), seed).to(device)
        self.params = {"width": width, "depth": depth, "seed": seed, "min_size_px": min_size_px}

    @property
    def weights_sha256(self) -> str:
        h = hashlib.sha256()
        for k, v in sorted(self.net.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
        return h.hexdigest()

    def forward(self, tiles: np.ndarray) -> np.ndarray:
        """(B,H,W,3) uint8 -> (B,C,H,W) float32 softmax probabilities."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode():
            prob = torch.softmax(self.net(x), dim=1)
        return prob.cpu().numpy()

    def predict_batch(self, tiles: np.ndarray) -> list[TileResult]:
        from scipy import ndimage

        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
            raise ValueError(f"expected (B,H,W,3) uint8 tiles, got {tiles.shape} {tiles.dtype}")
        probs = self.forward(tiles)
        out: list[TileResult] = []
        for p in probs:
            res = TileResult()
            if self.task in ("semantic", "panoptic"):
                res.semantic = p.astype(np.float32)
            if self.task in ("instance", "panoptic"):
                fg = p[1:].sum(axis=0) > 0.5
                lab, n = drop_small_labels(*ndimage.label(fg), self.min_size_px)
                scores = (
                    np.asarray(ndimage.mean(p[1:].sum(axis=0), lab, np.arange(1, n + 1)), np.float32)
                    if n
                    else np.zeros(0, np.float32)
                )
                res.labels = lab.astype(np.int32)
                res.instance_classes = np.ones(n, np.int64)
                res.instance_scores = scores
            out.append(res)
        return out


def native(device: str = "cpu", weights: str | None = None) -> SimpleSegmenter:
    """Factory for ``--model tilesegcli.segmenters.simple:native``: the simple net at the input's own
    resolution (``mpp=None``), e.g. for GeoTIFF demos whatever their ground sampling distance.
    Shows the ``package.module:factory`` route for bringing your own model to the CLI."""
    return SimpleSegmenter(mpp=None, mpp_unit="m", name="simple-native", device=device)
