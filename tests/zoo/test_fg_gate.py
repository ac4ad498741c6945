"""The foreground gate: the dense head shipped as ``fg_head``, its map through the flip views,
and instances dropped by their mean foreground probability."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tilesegcli.segmenters.aff_m2f import gate_instances  # noqa: E402
from tilesegcli.zoo import load_segmenter  # noqa: E402

from .test_segmenter import _card, _head, _tiles  # noqa: E402


def test_gate_drops_instances_outside_foreground() -> None:
    labels = np.zeros((16, 16), np.int32)
    labels[0:4, 0:4], labels[8:12, 8:12], labels[12:16, 0:4] = 1, 2, 3
    fg = torch.zeros(4, 4)
    fg[0, 0] = fg[3, 0] = 0.9  # the stride-4 cells under instances 1 and 3
    out, cls, sc = gate_instances(labels, np.array([1, 1, 2]), np.array([0.9, 0.8, 0.7]), fg, 0.5)
    assert out.max() == 2 and (out[0:4, 0:4] == 1).all() and (out[12:16, 0:4] == 2).all()
    assert not out[8:12, 8:12].any() and list(cls) == [1, 2] and list(sc) == [0.9, 0.7]


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    from tilesegcli.nn.aff_m2f import build_aff_m2f

    d = tmp_path_factory.mktemp("gated")
    torch.manual_seed(5)
    model = build_aff_m2f("aff_fixture", backbone_kwargs={"alpha": 4.0}, fg_head=True,
                          **_head()).eval()
    with torch.no_grad():
        model.sem_seg_head.predictor.class_embed.bias.mul_(0).add_(torch.tensor([2.0, 1.0, 0.5, -1.0]))
    torch.save({"model": dict(model.state_dict())}, d / "ckpt.pth")
    card = _card("instance")
    card["architecture"]["head_kwargs"] = {**_head(), "fg_head": True}
    card["weights"]["ignore_keys"] = []
    for views, gate in ((1, 0.0), (4, 0.0), (1, 0.5)):
        c = {**card, "name": f"gated-{views}-{gate}",
             "postprocess": {**card["postprocess"], "flip_views": views, "fg_gate": gate}}
        (d / f"v{views}g{gate}.json").write_text(json.dumps(c))
    return d


def test_fg_map_is_the_mean_over_flipped_views(gated) -> None:
    tiles = _tiles(2, 64, 64)
    one = load_segmenter(str(gated / "v1g0.0.json"), device="cpu")
    four = load_segmenter(str(gated / "v4g0.0.json"), device="cpu")
    _, _, m4 = four.forward_maps(tiles)
    fg4 = m4["fg"]
    maps = []
    for dims in ((), (1,), (2,), (1, 2)):  # the flip views: none, H, W, both
        _, _, mo = one.forward_maps(np.ascontiguousarray(np.flip(tiles, dims)) if dims else tiles)
        f = mo["fg"]
        maps.append(f.flip([d for d in dims]) if dims else f)
    assert fg4.shape == (2, 16, 16)
    torch.testing.assert_close(fg4, torch.stack(maps).mean(0), atol=1e-5, rtol=1e-5)


def test_gate_in_predict_batch(gated) -> None:
    tiles = _tiles(3, 64, 64)
    free = load_segmenter(str(gated / "v1g0.0.json"), device="cpu").predict_batch(tiles)
    seg = load_segmenter(str(gated / "v1g0.5.json"), device="cpu")
    gated_res = seg.predict_batch(tiles)
    _, _, mp = seg.forward_maps(tiles)
    fg = mp["fg"]
    for a, b, f in zip(free, gated_res, fg, strict=True):
        ref, _, _ = gate_instances(a.labels, a.instance_classes, a.instance_scores, f, 0.5)
        np.testing.assert_array_equal(b.labels, ref)
    assert sum(b.num_instances for b in gated_res) < sum(a.num_instances for a in free)
