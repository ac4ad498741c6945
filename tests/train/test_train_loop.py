"""A tiny AFF + Mask2Former trained for a few steps on synthetic annotated images: exact resume,
validation through the shipped Segmenter, export to a card that ``--model`` can load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tilesegcli.train.config import TrainConfig  # noqa: E402

TINY_ARCH = {
    "backbone": "aff_fixture",
    "backbone_kwargs": {},
    "head": "mask2former",
    "head_kwargs": {"num_classes": 1, "num_queries": 8, "hidden_dim": 32, "conv_dim": 32,
                    "mask_dim": 32, "nheads": 2, "dim_feedforward": 64, "enc_layers": 1,
                    "dec_layers": 3, "shepard_power": 4.0, "shepard_power_learnable": False},
}


def synthetic_nuclei(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 96 px image of 8 purple discs on white and its (uint16) instance labels."""
    img = np.full((96, 96, 3), 225, np.uint8)
    lab = np.zeros((96, 96), np.uint16)
    for k in range(1, 9):
        cy, cx = rng.integers(8, 88, 2)
        yy, xx = np.ogrid[:96, :96]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 25
        lab[disc] = k
        img[disc] = (90, 40, 140)
    return img, lab


def _data(tmp_path: Path) -> tuple[Path, Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        img, lab = synthetic_nuclei(rng)
        Image.fromarray(img).save(tmp_path / f"im{i}.png")
        Image.fromarray(lab).save(tmp_path / f"im{i}_lab.png")
        rows.append({"image": f"im{i}.png", "annotation": f"im{i}_lab.png", "mpp": 0.5,
                     "name": f"im{i}"})
    (tmp_path / "train.json").write_text(json.dumps(rows[:2]))
    (tmp_path / "val.json").write_text(json.dumps(rows[2:]))
    return tmp_path / "train.json", tmp_path / "val.json"


def _cfg(tmp_path: Path, out: str, steps: int) -> TrainConfig:
    tr, va = _data(tmp_path)
    return TrainConfig(out_dir=str(tmp_path / out), data_preset=None, train_list=str(tr),
                       val_list=str(va), tile=64, batch_size=2, steps=steps, warmup_steps=2,
                       architecture=TINY_ARCH, num_points=64, val_every=0, log_every=1,
                       threads=1, overlap=16)


def _weights(run: Path) -> dict:
    from tilesegcli.train.checkpoint import load_training_state

    return load_training_state(run / "last.pt")


def test_exact_resume_and_export(tmp_path: Path) -> None:
    from tilesegcli.train.loop import train

    a = train(_cfg(tmp_path, "straight", 4))
    b = train(_cfg(tmp_path, "split", 4), overrides={"steps": 2})
    assert _weights(b)["step"] == 2
    b = train(resume=b, overrides={"steps": 4})
    wa, wb = _weights(a), _weights(b)
    assert wa["step"] == wb["step"] == 4
    for k, v in wa["model"].items():
        assert torch.equal(v, wb["model"][k]), k
    log = [json.loads(x) for x in (b / "train_log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log if r["event"] in ("start", "resume")] == ["start", "resume"]

    # validation through the shipped Segmenter, then export -> card -> load_segmenter
    from tilesegcli.train.export import export_card
    from tilesegcli.train.net import build_net
    from tilesegcli.train.validate import validate
    from tilesegcli.zoo import load_segmenter

    cfg = TrainConfig.from_dict(wa["config"])
    net = build_net(cfg)
    net.load_state_dict(wa["model"])
    _, val = cfg.load_data()
    res = validate(net, val, cfg)
    assert set(res["mean"]) >= {"pq", "aji", "f1", "dice"}
    card = export_card(a / "last.pt", tmp_path / "m" / "tiny.json", name="tiny", description="test",
                       licence="CC0", metrics={"val PQ": res["mean"]["pq"]})
    d = json.loads(card.read_text())
    assert d["weights"]["bundled"] and d["mpp"] == 0.5 and d["classes"] == ["nucleus"]
    seg = load_segmenter(str(card), device="cpu")
    out = seg.predict_batch(np.zeros((1, 64, 64, 3), np.uint8))
    assert out[0].labels.shape == (64, 64)
    # the CLI's --validate path on the same checkpoint gives the same numbers
    from click.testing import CliRunner

    from tilesegcli.cli.train import train as cmd

    r = CliRunner().invoke(cmd, ["--resume", str(a / "last.pt"), "--validate", "--json",
                                 str(tmp_path / "v.json")])
    assert r.exit_code == 0, r.output
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["step"] == 4 and v["mean"]["dice"] == pytest.approx(res["mean"]["dice"], nan_ok=True)
    # a threshold sweep at the card's own threshold reproduces the validation numbers
    r = CliRunner().invoke(cmd, ["--resume", str(a / "last.pt"), "--validate", "--thresholds",
                                 f"0.9,{cfg.score_threshold}", "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    sw = json.loads((tmp_path / "s.json").read_text())["thresholds"]
    assert sw[str(cfg.score_threshold)]["dice"] == pytest.approx(res["mean"]["dice"], nan_ok=True)
    r = CliRunner().invoke(cmd, ["--resume", str(a / "last.pt"), "--validate", "--thresholds", "x"])
    assert r.exit_code != 0
    # fp16 weights: the loaded model equals the checkpoint rounded to fp16
    k = next(iter(k for k in wa["model"] if k.startswith("model.") and wa["model"][k].is_floating_point()))
    got = seg.model.state_dict()[k[len("model."):]]
    assert torch.equal(got, wa["model"][k].half().float())


def test_resume_into_another_directory(tmp_path: Path) -> None:
    """--resume RUN -O out_dir=NEW continues RUN's checkpoint in NEW (a second schedule beside the
    first) and leaves RUN as it was; it used to fail with a TypeError (out_dir given twice)."""
    from tilesegcli.train.loop import train

    a = train(_cfg(tmp_path, "first", 2))
    before = (a / "last.pt").read_bytes()
    b = train(resume=a, overrides={"steps": 4, "out_dir": str(tmp_path / "second")})
    assert b == tmp_path / "second"
    assert _weights(b)["step"] == 4 and _weights(a)["step"] == 2
    assert (a / "last.pt").read_bytes() == before
    assert json.loads((b / "config.json").read_text())["out_dir"] == str(tmp_path / "second")


def test_cli_errors(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tilesegcli.cli.train import train as cmd

    r = CliRunner().invoke(cmd, ["--export", str(tmp_path / "x.json")])
    assert r.exit_code != 0 and "--resume" in str(r.exception or r.output)
    r = CliRunner().invoke(cmd, ["-O", "nonsense=1"])
    assert r.exit_code != 0 and "nonsense" in str(r.exception or r.output)


def test_init_from_checkpoint_and_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--init-from copies every tensor that fits (a checkpoint, or an exported card) and leaves
    new parts (here a stride-2 mask branch) at their fresh initialisation."""
    from tilesegcli.train.export import export_card
    from tilesegcli.train.loop import init_weights, train
    from tilesegcli.train.net import build_net

    a = train(_cfg(tmp_path, "base", 2))
    src = _weights(a)["model"]
    arch = json.loads(json.dumps(TINY_ARCH))
    arch["head_kwargs"]["hires_dim"] = 16
    cfg = _cfg(tmp_path, "hr", 1).with_updates(architecture=arch)
    net = build_net(cfg)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    n, total = init_weights(net, str(a / "last.pt"))
    got = net.state_dict()
    assert n == len(src) and total > n
    for k, v in got.items():
        assert torch.equal(v, src[k] if k in src else fresh[k]), k
    (tmp_path / "m").mkdir()
    card = export_card(a / "last.pt", tmp_path / "m" / "tiny.json", name="tiny", description="t",
                       licence="CC0")
    net2 = build_net(cfg)
    n2, _ = init_weights(net2, str(card))
    assert n2 == sum(1 for k in src if k.startswith("model."))
    k = "model.sem_seg_head.predictor.query_feat.weight"
    assert torch.equal(net2.state_dict()[k], src[k].half().float())
    # a deeper network (more blocks per stage): added blocks start as the identity, so it computes
    # what the source computes, and their weights still receive gradients
    deep = json.loads(json.dumps(TINY_ARCH))
    deep["backbone_kwargs"] = {"depths": [2, 1, 3, 1]}
    net3 = build_net(_cfg(tmp_path, "deep", 1).with_updates(architecture=deep))
    n3, _ = init_weights(net3, str(a / "last.pt"))
    assert n3 == len(src)
    same = build_net(_cfg(tmp_path, "same", 1))
    same.load_state_dict(src)
    same.eval()
    net3.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(same.model(x)["pred_masks"], net3.model(x)["pred_masks"], atol=1e-5)
    new = net3.model.backbone.layers[0].blocks[1]
    assert not new.attn.proj.weight.any() and not new.mlp.fc2.weight.any()
    net3.model(x)["pred_masks"].square().sum().backward()
    assert new.attn.proj.weight.grad.abs().sum() > 0 and new.mlp.fc2.weight.grad.abs().sum() > 0
    # --init-from a card: the run takes its network, resolution, tiles and classes; other classes
    # give a class head of the new size (fresh) on the same network
    from click.testing import CliRunner

    from tilesegcli.cli.train import train as cmd
    from tilesegcli.train.source import inherited_settings

    inh = inherited_settings(str(card))
    assert inh["tile"] == 64 and inh["mpp"] == 0.5 and inh["class_names"] == ["nucleus"]
    assert inh["architecture"]["head_kwargs"] == TINY_ARCH["head_kwargs"]
    tr, va = _data(tmp_path)
    import tilesegcli.weights as weights_mod
    from tilesegcli.train.source import read_source

    read_source.cache_clear()
    reads = []
    real_load = weights_mod.load_weights_file
    monkeypatch.setattr(weights_mod, "load_weights_file", lambda *a, **k: reads.append(a) or real_load(*a, **k))
    r = CliRunner().invoke(cmd, ["--init-from", str(card), "-O", f"train_list={tr}",
                                 "-O", f"val_list={va}", "-O", f"out_dir={tmp_path / 'ft'}",
                                 "-O", "steps=1", "-O", "val_every=0", "-O", "threads=1",
                                 "-O", 'class_names=["a", "b"]'])
    assert r.exit_code == 0, r.output
    assert len(reads) == 1  # settings and weights from one read of the card's weights file
    assert read_source.cache_info().currsize == 0  # and the loop let go of them after loading
    ft = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert ft["tile"] == 64 and ft["architecture"]["head_kwargs"]["num_classes"] == 2
    first = json.loads((tmp_path / "ft" / "train_log.jsonl").read_text().splitlines()[0])
    assert first["event"] == "init" and 0 < first["loaded"] < first["of"]
    # a run started with init_from logs it and trains with the stride-2 head
    b = train(cfg.with_updates(init_from=str(a / "last.pt")))
    log = [json.loads(x) for x in (b / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "init" and log[0]["loaded"] == n
    # the exported stride-2 model runs through the shipped Segmenter at full tile resolution
    from tilesegcli.zoo import load_segmenter

    hr = export_card(b / "last.pt", tmp_path / "m" / "tiny-hr.json", name="tiny-hr", description="t",
                     licence="CC0")
    seg = load_segmenter(str(hr), device="cpu")
    assert seg.mask_stride == 2
    img = np.full((1, 64, 64, 3), 225, np.uint8)
    assert seg.forward(img)[1].shape[-2:] == (32, 32)
    assert seg.predict_batch(img)[0].labels.shape == (64, 64)


def test_fine_tuning_a_network_with_a_foreground_head_trains_that_head(tmp_path: Path) -> None:
    """A network that ships a foreground head (the gate of a card like aff-nuclei) is trained
    with the auxiliary dense loss through that head, so the exported gate follows the features
    it reads; a source whose separate auxiliary head differs loads the shipped head's tensors."""
    import torch

    from tilesegcli.train.loop import init_weights, train
    from tilesegcli.train.net import TrainNet

    arch = {**TINY_ARCH, "head_kwargs": {**TINY_ARCH["head_kwargs"], "fg_head": True}}
    base = _cfg(tmp_path, "base", 1).with_updates(architecture=arch)
    net = TrainNet(base)
    assert net.dense is net.model.sem_seg_head.fg_head
    run0 = train(base)
    before = _weights(run0)["model"]
    run1 = train(base.with_updates(out_dir=str(tmp_path / "ft"), steps=3,
                                   init_from=str(run0 / "last.pt")))
    after = _weights(run1)["model"]
    fg = [k for k in after if k.startswith("model.sem_seg_head.fg_head.")]
    assert fg and any(not torch.equal(after[k], before[k]) for k in fg)
    for k in fg:
        torch.testing.assert_close(after[k], after["dense." + k[len("model.sem_seg_head.fg_head."):]])
    # a checkpoint whose auxiliary head is not the shipped one (trained before they were one)
    state = _weights(run1)
    for k in list(state["model"]):
        if k.startswith("dense."):
            state["model"][k] = torch.zeros_like(state["model"][k])
    odd = tmp_path / "odd.pt"
    torch.save(state, odd)
    fresh = TrainNet(base)
    init_weights(fresh, str(odd))
    for k in fg:
        torch.testing.assert_close(fresh.state_dict()[k], after[k])
    # resuming such a checkpoint (no step left to run: the loaded tensors are written back)
    resumed = _weights(train(resume=odd, overrides={"steps": 3}))["model"]
    for k in fg:
        torch.testing.assert_close(resumed[k], after[k])
