"""split_merged: two touching round nuclei given as one instance become two; one nucleus, round
or elongated, stays one."""

from __future__ import annotations

import numpy as np

from tilesegcli.nn.postprocess import split_merged


def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_two_touching_disks_split_one_disk_and_an_ellipse_stay() -> None:
    shape = (64, 96)
    labels = np.zeros(shape, np.int32)
    labels[_disk(shape, 20, 20, 9) | _disk(shape, 20, 35, 9)] = 1  # a merge of two nuclei
    labels[_disk(shape, 48, 20, 10)] = 2  # one nucleus
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels[((yy - 45) / 8.0) ** 2 + ((xx - 70) / 16.0) ** 2 <= 1] = 3  # one elongated nucleus
    out, src = split_merged(labels, depth=2.0)
    assert src.tolist() == [1, 1, 2, 3]
    assert ((out > 0) == (labels > 0)).all()  # no pixel gained or lost
    a, b = (out == 1), (out == 2)
    assert abs(int(a.sum()) - int(b.sum())) < 0.1 * a.sum()  # split near the waist
    assert a[20, 20] and b[20, 35]
    # a deep threshold splits nothing
    out2, src2 = split_merged(labels, depth=6.0)
    assert src2.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(out2, labels)


def test_no_instances() -> None:
    out, src = split_merged(np.zeros((8, 8), np.int32), depth=2.0)
    assert out.max() == 0 and src.size == 0
