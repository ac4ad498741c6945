from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tilesegcli.nn.inputs import (  # noqa: E402
    channel_stats,
    normalise,
    pad_to_multiple,
    tiles_to_input,
)


def test_normalise_is_per_channel_mean_std() -> None:
    mean, std = channel_stats((10.0, 20.0, 30.0), (2.0, 4.0, 5.0))
    assert mean.shape == std.shape == (1, 3, 1, 1) and mean.dtype == torch.float32
    x = torch.tensor([[[[12]], [[28]], [[25]]]], dtype=torch.uint8)  # (1, 3, 1, 1)
    assert normalise(x, mean, std).flatten().tolist() == [1.0, 2.0, -1.0]


@pytest.mark.parametrize(("h", "w", "d", "out"), [(5, 7, 4, (8, 8)), (8, 8, 4, (8, 8)),
                                                   (5, 7, 1, (5, 7)), (5, 7, 0, (5, 7))])
def test_pad_to_multiple_pads_bottom_right_with_zeros(h: int, w: int, d: int,
                                                      out: tuple[int, int]) -> None:
    x = torch.ones(2, 3, h, w)
    y = pad_to_multiple(x, d)
    assert tuple(y.shape[-2:]) == out
    assert torch.equal(y[..., :h, :w], x) and float(y.sum()) == float(x.sum())


def test_tiles_to_input_normalises_then_pads() -> None:
    tiles = np.full((1, 3, 5, 3), 30, np.uint8)
    mean, std = channel_stats((10.0, 20.0, 30.0), (2.0, 5.0, 1.0))
    x = tiles_to_input(tiles, mean, std, 4, torch.device("cpu"))
    assert x.shape == (1, 3, 4, 8)
    assert x[0, :, 0, 0].tolist() == [10.0, 2.0, 0.0]
    assert float(x[..., 3:, :].abs().sum()) == 0.0 and float(x[..., 5:].abs().sum()) == 0.0
