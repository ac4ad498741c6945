"""SemanticSegmenter (tilesegcli.segmenters.dense) around SeaFormer and Focal nets: TileResult
contract, normalisation, padding, class offset, errors, and loading weights from a card."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tilesegcli.errors import UsageError, WeightsError
from tilesegcli.nn.focal import focal_test
from tilesegcli.nn.seaformer import checkpoint_filter_fn, seaformer_test
from tilesegcli.segmenter import ClassInfo, Segmenter
from tilesegcli.segmenters.dense import SemanticSegmenter, build_semantic_net, load_backbone_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _classes(n: int) -> list[ClassInfo]:
    return [ClassInfo("background", (0, 0, 0))] + [ClassInfo(f"c{i}", (i, i, i))
                                                    for i in range(1, n)]


def _tiles(b: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("build", [seaformer_test, focal_test])
def test_tile_results_are_probabilities_of_tile_size(build) -> None:
    torch.manual_seed(0)
    seg = SemanticSegmenter(build(num_classes=3), name="t", classes=_classes(3), device="cpu")
    assert isinstance(seg, Segmenter)
    res = seg.predict_batch(_tiles(2, 45, 37))
    assert len(res) == 2
    for r in res:
        assert r.semantic is not None and r.semantic.dtype == np.float32
        assert r.semantic.shape == (3, 45, 37)
        np.testing.assert_allclose(r.semantic.sum(0), 1.0, atol=1e-5)
        assert r.labels is None and r.num_instances == 0


def test_normalisation_matches_manual_forward() -> None:
    torch.manual_seed(0)
    net = seaformer_test(num_classes=3)
    mean, std = (10.0, 20.0, 30.0), (50.0, 60.0, 70.0)
    seg = SemanticSegmenter(net, name="t", classes=_classes(3), mean=mean, std=std, device="cpu")
    tiles = _tiles(1, 40, 24, seed=1)
    x = (torch.from_numpy(tiles).permute(0, 3, 1, 2).float()
         - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = net.eval()(x, upsample=True).softmax(1)[0].numpy()
    np.testing.assert_allclose(seg.predict_batch(tiles)[0].semantic, want, atol=1e-5)


def test_implicit_background_and_padding() -> None:
    torch.manual_seed(0)
    net = focal_test(num_classes=3)
    seg = SemanticSegmenter(net, name="t", classes=_classes(4), class_offset=1,
                            size_divisibility=32, device="cpu")
    tiles = _tiles(1, 50, 33)
    p = seg.predict_batch(tiles)[0].semantic
    assert p.shape == (4, 50, 33)
    assert np.all(p[0] == 0.0)
    np.testing.assert_allclose(p[1:].sum(0), 1.0, atol=1e-5)
    # padding to 32 really happens: the result differs from the unpadded run near the border
    plain = SemanticSegmenter(net, name="t", classes=_classes(4), class_offset=1, device="cpu")
    assert not np.allclose(plain.predict_batch(tiles)[0].semantic, p)


def test_bad_inputs_are_usage_errors() -> None:
    seg = SemanticSegmenter(seaformer_test(num_classes=3), name="t", classes=_classes(3),
                            device="cpu")
    with pytest.raises(UsageError, match="uint8"):
        seg.predict_batch(np.zeros((1, 16, 16, 3), np.float32))
    with pytest.raises(UsageError, match="uint8"):
        seg.predict_batch(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(UsageError, match="classes"):
        SemanticSegmenter(seaformer_test(num_classes=3), name="t", classes=_classes(5))
    with pytest.raises(UsageError, match="unknown semantic backbone"):
        build_semantic_net({"backbone": "resnet50"})
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA"):
            SemanticSegmenter(seaformer_test(num_classes=3), name="t", classes=_classes(3),
                              device="cuda")


_TO_OFFICIAL = [
    (r"^backbone\.stem\.0\.", lambda m: "backbone.smb1.stem_block.0."),
    (r"^backbone\.mv2\.(\d+)\.(\d+)\.",
     lambda m: f"backbone.smb{int(m[1]) + 1}.layer{int(m[2]) + 1}."),
    (r"^backbone\.sea\.(\d+)\.(\d+)\.",
     lambda m: f"backbone.trans{int(m[1]) + 1}.transformer_blocks.{m[2]}."),
    (r"\.pos_(row|col)(q|k)\.",
     lambda m: f".pos_emb_{'row' if m[1] == 'row' else 'column'}{m[2]}."),
    (r"\.proj_row\.", lambda m: ".proj_encode_row."),
    (r"\.proj_col\.", lambda m: ".proj_encode_column."),
    (r"^head\.fuse\.(\d+)\.local\.c\.", lambda m: f"decode_head.fuse{int(m[1]) + 1}.local_embedding.conv."),
    (r"^head\.fuse\.(\d+)\.local\.bn\.", lambda m: f"decode_head.fuse{int(m[1]) + 1}.local_embedding.bn."),
    (r"^head\.fuse\.(\d+)\.gate\.c\.", lambda m: f"decode_head.fuse{int(m[1]) + 1}.global_act.conv."),
    (r"^head\.fuse\.(\d+)\.gate\.bn\.", lambda m: f"decode_head.fuse{int(m[1]) + 1}.global_act.bn."),
    (r"^head\.fuse_conv\.0\.c\.", lambda m: "decode_head.linear_fuse.conv."),
    (r"^head\.fuse_conv\.0\.bn\.", lambda m: "decode_head.linear_fuse.bn."),
    (r"^head\.classifier\.", lambda m: "decode_head.conv_seg."),
]


def _official_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for pat, fn in _TO_OFFICIAL:
            k = re.sub(pat, fn, k)
        out[k] = v
    return out


def test_filter_round_trips_every_seaformer_key() -> None:
    net = seaformer_test(num_classes=3)
    sd = net.state_dict()
    official = _official_names(sd)
    assert not set(official) & set(sd)  # every key really is renamed
    back = checkpoint_filter_fn(official, net)
    assert set(back) == set(sd)


def _card(tmp_path: Path, arch: dict, filename: str, sha: str | None):
    from tilesegcli.zoo import card_from_dict

    data = {"format": 1, "name": "test-sem", "task": "semantic", "architecture": arch,
            "classes": ["a", "b", "c"], "background": "implicit", "tile_size": 64,
            "overlap": 8, "mpp": 0.5, "input": {"mean": [120, 110, 100], "std": [60, 55, 50],
                                                "size_divisibility": 1},
            "weights": {"filename": filename, "bundled": True, "sha256": sha}}
    return card_from_dict(data, base_dir=str(tmp_path))


def test_from_card_loads_official_named_seaformer_weights(tmp_path: Path) -> None:
    import hashlib

    from safetensors.torch import save_file

    torch.manual_seed(3)
    src = seaformer_test(num_classes=3)
    with torch.no_grad():  # non-trivial BN statistics so a silent non-load would show
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in _official_names(src.state_dict()).items()},
              str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    arch = {"backbone": "seaformer_test", "head": "seaformer", "head_kwargs": {"num_classes": 3}}
    seg = SemanticSegmenter.from_card(_card(tmp_path, arch, "w.safetensors", sha), device="cpu")
    assert seg.tile_size == 64 and seg.mpp == 0.5 and len(seg.classes) == 4
    tiles = _tiles(1, 32, 32)
    x = (torch.from_numpy(tiles).permute(0, 3, 1, 2).float()
         - torch.tensor([120.0, 110, 100]).view(1, 3, 1, 1)) / torch.tensor(
        [60.0, 55, 50]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = src.eval()(x, upsample=True).softmax(1)[0].numpy()
    got = seg.predict_batch(tiles)[0].semantic
    np.testing.assert_allclose(got[1:], want, atol=1e-5)
    with pytest.raises(WeightsError, match="sha256"):
        SemanticSegmenter.from_card(_card(tmp_path, arch, "w.safetensors", "0" * 64))


def test_from_card_focal_pt_weights_and_missing_head(tmp_path: Path) -> None:
    torch.manual_seed(4)
    src = focal_test(num_classes=3)
    torch.save(src.state_dict(), tmp_path / "f.pt")
    arch = {"backbone": "focal_test", "head": "focal_fpn",
            "head_kwargs": {"num_classes": 3, "head_dim": 16}}
    seg = SemanticSegmenter.from_card(_card(tmp_path, arch, "f.pt", None), device="cpu")
    for k, v in src.state_dict().items():
        assert torch.equal(seg.net.state_dict()[k], v), k
    # an ImageNet (backbone-only, official names) checkpoint cannot make a segmenter
    backbone_only = {k[len("backbone."):]: v for k, v in src.state_dict().items()
                     if k.startswith("backbone.")}
    torch.save(backbone_only, tmp_path / "b.pt")
    with pytest.raises(WeightsError, match="missing"):  # the FPN head is not in the file
        SemanticSegmenter.from_card(_card(tmp_path, arch, "b.pt", None), device="cpu")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.pt"):
        SemanticSegmenter.from_card(_card(tmp_path, arch, "bad.pt", None), device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("build", [seaformer_test, focal_test])
def test_cuda_matches_cpu(build) -> None:
    torch.manual_seed(0)
    net = build(num_classes=3)
    tiles = _tiles(2, 48, 40)
    cpu = SemanticSegmenter(net, name="t", classes=_classes(3), device="cpu").predict_batch(tiles)
    gpu = SemanticSegmenter(net, name="t", classes=_classes(3), device="cuda").predict_batch(tiles)
    for a, b in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(a.semantic, b.semantic, atol=1e-4)


def test_backbone_init_from_official_imagenet_checkpoints(tmp_path: Path) -> None:
    # SeaFormer ImageNet checkpoint: bare official names + a Linear classifier, EMA weights
    torch.manual_seed(5)
    src = seaformer_test(num_classes=3)
    bare = {k[len("backbone."):]: v for k, v in _official_names(src.state_dict()).items()
            if k.startswith("backbone.")}
    bare["linear.weight"] = torch.zeros(1000, 24)
    torch.save({"state_dict_ema": bare}, tmp_path / "sea_cls.pth")
    torch.manual_seed(6)
    dst = seaformer_test(num_classes=5)
    head_before = {k: v.clone() for k, v in dst.head.state_dict().items()}
    assert load_backbone_weights(dst, tmp_path / "sea_cls.pth", family="seaformer") == []
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(dst.backbone.state_dict()[k], v), k
    for k, v in dst.head.state_dict().items():
        assert torch.equal(head_before[k], v), k

    # Focal ImageNet checkpoint: official names, one final norm, 1000-class head, index buffers
    inverse = [(".attn.rpb_local", ".attn.relative_position_bias_table"),
               (".attn.rpb_neighbors", ".attn.relative_position_bias_table_to_neighbors"),
               (".attn.rpb_pooled.", ".attn.relative_position_bias_table_to_windows."),
               (".pool.", ".pool_layers."), ("out_norms.3.", "norm.")]
    fsrc = focal_test(num_classes=3)
    official = {}
    for k, v in fsrc.backbone.state_dict().items():
        if k.startswith(("out_norms.0.", "out_norms.1.", "out_norms.2.")):
            continue
        for a, b in inverse:
            k = k.replace(a, b)
        official[k] = v
    official["head.weight"] = torch.zeros(1000, 64)
    # official 224-px ImageNet models have no neighbour table in the (one-window) last stage
    del official["layers.3.blocks.0.attn.relative_position_bias_table_to_neighbors"]
    official["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16)
    torch.save({"model": official}, tmp_path / "focal_cls.pth")
    fdst = focal_test(num_classes=2)
    left = load_backbone_weights(fdst, tmp_path / "focal_cls.pth", family="focal")
    nb = "backbone.layers.3.blocks.0.attn.rpb_neighbors"
    assert sorted(left) == sorted([nb] + [f"backbone.out_norms.{i}.{p}" for i in range(3)
                                          for p in ("weight", "bias")])
    assert torch.count_nonzero(fdst.state_dict()[nb]) == 0
    for k, v in fsrc.backbone.state_dict().items():
        if not k.startswith(("out_norms.0.", "out_norms.1.", "out_norms.2.")) \
                and "backbone." + k != nb:
            assert torch.equal(fdst.backbone.state_dict()[k], v), k
    # a checkpoint of another size is refused with a clear error
    with pytest.raises(WeightsError, match="missing|shape"):
        load_backbone_weights(focal_test(num_classes=2, embed_dim=16, head_dim=16),
                              tmp_path / "focal_cls.pth", family="focal")
