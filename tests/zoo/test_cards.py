"""Model cards: the bundled zoo, user cards by path, validation, overrides, the `models` CLI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tilesegcli.errors import ModelNotFoundError, WeightsError
from tilesegcli.zoo import (
    DEFAULT_MODEL,
    InvalidCardError,
    card_from_dict,
    card_names,
    list_cards,
    load_card,
    write_card,
)

OFFICIAL = {
    "ade20k": ["mini", "mini-1-5th", "tiny", "tiny-1-5th", "small", "small-1-5th"],
    "coco-instance": ["mini", "mini-1-5th", "tiny", "tiny-1-5th", "small", "small-1-5th"],
    "cityscapes-instance": ["mini", "tiny", "small", "base"],
    "cityscapes-panoptic": ["mini", "tiny", "small", "base"],
}


def _official_names() -> list[str]:
    out = []
    for tag, variants in OFFICIAL.items():
        for v in variants:
            size, _, fifth = v.partition("-")
            out.append(f"aff-{size}.{tag}" + ("-1-5th" if fifth else ""))
    return out


def test_every_official_checkpoint_has_a_card():
    names = set(card_names())
    assert set(_official_names()) <= names
    assert {"aff-mini", "aff-tiny", "aff-small", "aff-base"} <= names
    assert len(_official_names()) == 20


def test_bundled_cards_are_consistent():
    cards = list_cards()
    urls: dict[str, str] = {}
    for c in cards:
        assert c.classes[0].name == "background"
        assert c.task in ("semantic", "instance", "panoptic")
        assert c.tile_size > c.overlap >= 0 and c.mpp and c.mpp > 0
        if c.weights.url:
            assert c.weights.url.startswith("https://docs-assets.developer.apple.com/ml-research/")
            # one cache file per URL, never two URLs under one file name
            assert urls.setdefault(c.weights.filename, c.weights.url) == c.weights.url
            assert c.mpp_nominal and "nominal" in c.description
        assert c.weights.sha256 is None or len(c.weights.sha256) == 64
        if c.weights.sha256 is None:
            assert "sha256 unknown" in c.weights.note or c.weights.bundled
    by = {c.name: c for c in cards}
    assert len(by["aff-mini.ade20k"].classes) == 151
    assert len(by["aff-tiny.coco-instance"].classes) == 81
    assert len(by["aff-small.cityscapes-panoptic"].classes) == 20
    assert len(by["aff-small.cityscapes-panoptic"].thing_classes) == 8
    assert len(by["aff-mini.cityscapes-instance"].classes) == 9
    base_ins = by["aff-base.cityscapes-instance"]  # the panoptic file, run in instance mode
    assert base_ins.architecture["head_kwargs"]["num_queries"] == 250
    assert [base_ins.classes[i].name for i in base_ins.thing_classes][:2] == ["person", "rider"]
    coco = by["aff-mini.coco-instance"].architecture["head_kwargs"]
    assert coco["shepard_power"] == 4.0 and coco["shepard_power_learnable"] is False
    assert by["aff-mini.cityscapes-panoptic"].architecture["backbone_kwargs"]["alpha"] == 8.0
    assert by["aff-mini.ade20k-1-5th"].architecture["backbone_kwargs"]["ds_rate"] == 0.2
    assert by["aff-mini.ade20k"].classes[1].name == "wall"
    assert by["aff-mini.ade20k"].classes[1].color == (120, 120, 120)


def test_bare_names_extend_their_default_and_tag_aliases():
    mini = load_card("aff-mini")
    assert mini.name == "aff-mini" and mini.task == "instance"
    assert mini.weights == load_card("aff-mini.coco-instance").weights
    assert mini.backbone_weights is not None and mini.backbone_weights.url.endswith(
        "/classification/aff_mini.pth")
    assert load_card("aff-base").task == "panoptic"
    assert load_card("aff-mini.coco").name == "aff-mini.coco-instance"
    assert load_card("aff-tiny.ade").name == "aff-tiny.ade20k"


def test_unknown_names_suggest_close_matches(tmp_path):
    with pytest.raises(ModelNotFoundError, match="did you mean aff-mini.ade20k"):
        load_card("aff-mni.ade20k")
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_card(tmp_path / "nope.json")
    if DEFAULT_MODEL not in card_names():
        with pytest.raises(ModelNotFoundError, match="default nuclei model"):
            load_card(DEFAULT_MODEL)


# Nuclei density measured on the 13 MoNuSeg 2018 training images with ImageScope XML
# (1000 x 1000 px at 0.25 um/px): 294..472 nuclei per 0.0625 mm^2, mean 380.8 -> 6,100 / mm^2.
MONUSEG_MEAN_PER_MM2 = 380.8 / 0.0625
BORDER_CUT = 1.2  # objects cut by the tile edge also occupy a query


def test_nuclei_card_queries_cover_density():
    """Issue 5: expected objects per tile well under (< half) the number of queries."""
    if DEFAULT_MODEL not in card_names():
        pytest.skip("aff-nuclei card not present")
    c = load_card(DEFAULT_MODEL)
    assert c.mpp_unit == "um" and not c.mpp_nominal and c.mpp is not None
    side_mm = c.tile_size * c.mpp / 1000.0
    expected = MONUSEG_MEAN_PER_MM2 * side_mm**2 * BORDER_CUT
    queries = c.architecture["head_kwargs"]["num_queries"]
    assert expected < 0.5 * queries, (expected, queries)
    assert c.postprocess["top_k"] >= expected


def _user_card(**over) -> dict:
    d = {"format": 1, "name": "my-model", "task": "instance", "tile_size": 256, "overlap": 32,
         "classes": [{"name": "tumour", "color": [255, 0, 0]}, "stroma"],
         "architecture": {"backbone": "aff_mini", "head": "mask2former",
                          "head_kwargs": {"num_classes": 2}},
         "mpp": 0.5, "weights": {"filename": "w.safetensors", "bundled": True}}
    d.update(over)
    return d


def test_user_card_by_path_dir_and_extends(tmp_path):
    (tmp_path / "card.json").write_text(json.dumps(_user_card()))
    c = load_card(tmp_path / "card.json")
    assert [x.name for x in c.classes] == ["background", "tumour", "stroma"]
    assert c.source == str(tmp_path / "card.json") and c.base_dir == str(tmp_path)
    assert c.mean == (123.675, 116.28, 103.53)  # default ImageNet normalisation
    assert load_card(str(tmp_path)).name == "my-model"  # a directory holding card.json
    sub = tmp_path / "v2"
    sub.mkdir()
    (sub / "v2.json").write_text(json.dumps({"extends": "../card.json", "name": "my-model-v2",
                                             "tile_size": 512, "input": {"mean": [0.5] * 3,
                                                                         "std": [0.25] * 3,
                                                                         "range": 1}}))
    v2 = load_card(sub / "v2.json")
    assert v2.name == "my-model-v2" and v2.tile_size == 512 and v2.task == "instance"
    assert v2.mean == (127.5,) * 3 and v2.std == (63.75,) * 3
    assert v2.base_dir == str(sub)
    ext = tmp_path / "ext.json"
    ext.write_text(json.dumps({"extends": "aff-tiny.coco-instance", "name": "coco-tuned",
                               "weights": {"url": None, "filename": "t.pth"},
                               "architecture": {"head_kwargs": {"num_classes": 80}}}))
    t = load_card(ext)
    assert t.architecture["backbone"] == "aff_tiny" and t.weights.filename == "t.pth"
    assert t.weights.ignore_keys == () and t.weights.sha256 is None  # weights replaced whole
    assert t.architecture["head_kwargs"]["num_queries"] == 100  # architecture merges


def test_a_child_card_keeps_its_parents_bundled_weights(tmp_path):
    """A card that extends one with bundled weights and names none of its own (to change only
    post-processing, say) loads the parent's file, wherever the child lives; own weights win."""
    from tilesegcli.weights import resolve_weights

    (tmp_path / "w.safetensors").write_bytes(b"weights")
    (tmp_path / "card.json").write_text(json.dumps(_user_card()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "child.json").write_text(json.dumps(
        {"extends": "../card.json", "name": "child", "postprocess": {"score_threshold": 0.7}}))
    (elsewhere / "grandchild.json").write_text(json.dumps({"extends": "child.json", "name": "g"}))
    for name in ("child", "grandchild"):
        assert resolve_weights(load_card(elsewhere / f"{name}.json")) == tmp_path / "w.safetensors"
    (elsewhere / "own.json").write_text(json.dumps(
        {"extends": "../card.json", "name": "own",
         "weights": {"filename": "w.safetensors", "bundled": True}}))
    with pytest.raises(WeightsError, match="elsewhere/w.safetensors"):
        resolve_weights(load_card(elsewhere / "own.json"))
    if DEFAULT_MODEL in card_names():  # a bundled parent: the file in the package
        (elsewhere / "nuclei.json").write_text(json.dumps(
            {"extends": DEFAULT_MODEL, "name": "nuclei-tuned", "postprocess": {"flip_views": 1}}))
        assert resolve_weights(load_card(elsewhere / "nuclei.json")).is_file()


def test_extending_natural_image_card_with_own_pixel_size_is_not_nominal(tmp_path):
    """The models/README recipe (a natural-image card given a real m/px) drops the parent's
    mpp_nominal; a child that leaves the pixel size alone, or says so explicitly, keeps it."""
    assert load_card("aff-mini.coco-instance").mpp_nominal

    def child(name: str, **fields) -> Path:
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps({"extends": "aff-mini.coco-instance", "name": name, **fields}))
        return p

    aerial = load_card(child("coco-aerial", mpp=0.3, mpp_unit="m"))
    assert (aerial.mpp, aerial.mpp_unit, aerial.mpp_nominal) == (0.3, "m", False)
    assert "mpp_nominal" not in aerial.to_dict()  # a written copy of the card stays real too
    assert not load_card(child("finer", mpp=0.25)).mpp_nominal  # mpp alone: real too
    assert not load_card(child("metres", mpp_unit="m")).mpp_nominal  # unit alone: real too
    assert load_card(child("tiles", tile_size=640)).mpp_nominal  # pixel size untouched
    assert load_card(child("says-so", mpp=2.0, mpp_nominal=True)).mpp_nominal
    # two levels: the grandchild inherits its parent's real pixel size and no flag
    grand = tmp_path / "grand.json"
    grand.write_text(json.dumps({"extends": "coco-aerial.json", "name": "grand",
                                 "tile_size": 640}))
    assert not load_card(grand).mpp_nominal and load_card(grand).mpp == 0.3


@pytest.mark.parametrize("bad, msg", [
    ({"task": "detect"}, "task must be"),
    ({"architecture": {"head_kwargs": {"num_classes": 5}}}, "num_classes=5"),
    ({"overlap": 300}, "overlap"),
    ({"mpp_unit": "mm"}, "mpp_unit"),
    ({"classes": "imagenet"}, "unknown class set"),
    ({"weights": {"sha256": "xyz", "filename": "a"}}, "sha256"),
    ({"background": "none"}, "background"),
    ({"format": 99}, "newer"),
])
def test_invalid_cards_are_refused(tmp_path, bad, msg):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(_user_card(**bad)))
    with pytest.raises(InvalidCardError, match=msg):
        load_card(p)


def test_broken_json_and_extends_loop(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InvalidCardError, match="not valid JSON"):
        load_card(tmp_path / "broken.json")
    (tmp_path / "a.json").write_text(json.dumps({"extends": "b.json", "name": "a"}))
    (tmp_path / "b.json").write_text(json.dumps({"extends": "a.json", "name": "b"}))
    with pytest.raises(InvalidCardError, match="loops"):
        load_card(tmp_path / "a.json")


def test_overrides_warn_and_change_fingerprint(caplog):
    c = load_card("aff-mini.ade20k")
    with caplog.at_level(logging.WARNING):
        o = c.with_overrides(tile_size=256, score_threshold=0.3, overlap=None)
    assert o.tile_size == 256 and o.postprocess["score_threshold"] == 0.3 and o.overlap == c.overlap
    assert "overrides the card default" in caplog.text
    assert o.fingerprint() != c.fingerprint() and c.fingerprint() == load_card(c.name).fingerprint()
    assert c == load_card(c.name) and len({c, load_card(c.name), o}) == 2  # hashable, by content
    with pytest.raises(Exception, match="cannot override"):
        c.with_overrides(classes=[])


def test_write_card_roundtrip(tmp_path):
    c = card_from_dict(_user_card(), base_dir=str(tmp_path))
    p = write_card(c, tmp_path / "out.json")
    again = load_card(p)
    assert again.fingerprint() == c.fingerprint() and again.classes == c.classes
    assert [q.name for q in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(InvalidCardError):
        write_card({"name": "x"}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_official_mini_ade_architecture_matches_reference_counts():
    """AFF-REFERENCE §4: SEG AFF-Mini/ADE has 571 keys, 6.37M backbone + 19.43M head params."""
    from tilesegcli.segmenters.aff_m2f import build_model

    m = build_model(load_card("aff-mini.ade20k"))
    sd = m.state_dict()
    bb = sum(v.numel() for k, v in m.named_parameters() if k.startswith("backbone."))
    hd = sum(v.numel() for k, v in m.named_parameters() if k.startswith("sem_seg_head."))
    assert len(sd) == 571 and round(bb / 1e6, 2) == 6.37 and round(hd / 1e6, 2) == 19.43
    # COCO: Shepard power fixed, so the 6 encoder layers have no shepard_power key
    coco = build_model(load_card("aff-mini.coco-instance")).state_dict()
    assert len(coco) == 565 and not any(k.endswith("shepard_power") for k in coco)


def test_import_is_light_and_cli(tmp_path):
    code = "import sys, tilesegcli.zoo, tilesegcli.cli.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    exe = [sys.executable, "-m", "tilesegcli"]
    r = subprocess.run(exe + ["models"], capture_output=True, text=True)
    assert r.returncode == 0 and "aff-mini.ade20k" in r.stdout and "semantic" in r.stdout
    r = subprocess.run(exe + ["models", "--json"], capture_output=True, text=True)
    rows = json.loads(r.stdout)
    assert {x["name"] for x in rows} == set(card_names())
    r = subprocess.run(exe + ["models", "show", "aff-mini.coco", "--json"], capture_output=True,
                       text=True)
    assert json.loads(r.stdout)["name"] == "aff-mini.coco-instance"
    r = subprocess.run(exe + ["models", "show", "aff-tiny.cityscapes-panoptic"],
                       capture_output=True, text=True)
    assert "coco_ins" not in r.stdout and "city_pan/aff_tiny.pth" in r.stdout
    r = subprocess.run(exe + ["models", "show", "aff-nope"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown model" in r.stderr
    assert "Traceback" not in r.stderr


def test_overriding_the_pixel_size_of_a_natural_image_card_makes_it_physical():
    card = load_card("aff-mini.coco-instance")
    assert card.mpp_nominal
    assert card.with_overrides(tile_size=256).mpp_nominal  # other overrides keep the flag
    assert card.with_overrides(mpp=card.mpp).mpp_nominal  # no change, still the placeholder
    assert not card.with_overrides(mpp=0.3).mpp_nominal
    assert not card.with_overrides(mpp_unit="m").mpp_nominal
