"""`tileseg train`: train / resume / validate / export an AFF + Mask2Former model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from tilesegcli.errors import UsageError


@click.command("train")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Training configuration (JSON; fields of TrainConfig).")
@click.option("-O", "--options", "options", multiple=True, metavar="KEY=VALUE",
              help="Override one configuration field (repeatable), e.g. -O lr=1e-4 -O steps=5000.")
@click.option("--resume", type=click.Path(exists=True, path_type=Path), default=None,
              help="Continue a run: its directory (uses last.pt) or a checkpoint file.")
@click.option("--init-from", "init_from", default=None, metavar="CARD|CKPT",
              help="Fine-tune: start from a zoo model (name or card path) or a training checkpoint "
                   "(e.g. --init-from aff-nuclei). Without --config the run takes that model's "
                   "network, classes, resolution, tile size and post-processing; tensors that fit "
                   "are loaded.")
@click.option("--validate", "validate_only", is_flag=True,
              help="Only score the --resume checkpoint on the validation images and exit.")
@click.option("--thresholds", default=None, metavar="T1,T2,...",
              help="With --validate: score each instance score threshold (one network pass), "
                   "e.g. to pick the card's score_threshold on a tuning list (-O val_list=...); "
                   "the other post-processing settings (-O min_visible_fraction=F, ...) apply.")
@click.option("--export", "card_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Only write the --resume checkpoint as a model card (+ .safetensors beside it).")
@click.option("--name", default=None, help="Model name for --export (default: the card's stem).")
@click.option("--description", default="", help="Card description for --export.")
@click.option("--licence", default="unknown", help="Card licence text for --export.")
@click.option("--metrics-json", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSON object of measured metrics to put in the exported card.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --validate: also write the metrics as JSON.")
def train(config_path: Path | None, options: tuple[str, ...], resume: Path | None,
          init_from: str | None, thresholds: str | None, validate_only: bool, card_out: Path | None, name: str | None, description: str,
          licence: str, metrics_json: Path | None, json_out: Path | None) -> None:
    """Train an AFF + Mask2Former instance model on annotated images.

    Data: the bundled nuclei set (-O data_preset=nuclei -O data_root=../shared/data/nuclei) or
    JSON lists of {"image", "annotation", "mpp"} (-O train_list=a.json -O val_list=b.json);
    annotations may be QuPath GeoJSON, ImageScope XML, label images, CPM-15 text or NuCLS .npy.
    Checkpoints (last.pt, best.pt), train_log.jsonl and config.json go to out_dir.

    \b
    $ tileseg train --config nuclei.json -O out_dir=runs/nuclei
    $ tileseg train --init-from aff-nuclei -O train_list=mine.json -O out_dir=runs/mine
    $ tileseg train --resume runs/nuclei -O steps=20000
    $ tileseg train --resume runs/nuclei/best.pt --validate
    $ tileseg train --resume runs/nuclei/best.pt --export models/my-nuclei.json --licence "..."
    """
    from tilesegcli.train.config import TrainConfig, parse_options

    overrides = parse_options(list(options))
    if init_from is not None:
        if resume is not None:
            raise UsageError("--init-from starts a new run; it cannot be used with --resume")
        overrides["init_from"] = init_from
    if card_out is not None or validate_only:
        if resume is None:
            raise UsageError("--export/--validate need --resume CHECKPOINT")
        from tilesegcli.train.checkpoint import run_checkpoint

        ckpt = run_checkpoint(resume, best=True)
        if validate_only:
            _validate(ckpt, overrides, json_out, _parse_thresholds(thresholds))
        if card_out is not None:
            from tilesegcli.train.export import export_card

            metrics = json.loads(metrics_json.read_text()) if metrics_json else None
            p = export_card(ckpt, card_out, name=name or card_out.stem, description=description,
                            licence=licence, metrics=metrics, overrides=overrides)
            click.echo(f"wrote {p} and {p.with_suffix('.safetensors')}")
        return
    from tilesegcli.train.loop import train as run

    if resume is not None:
        out = run(resume=resume, overrides=overrides)
    else:
        cfg = TrainConfig.from_file(config_path) if config_path else TrainConfig()
        if init_from is not None and config_path is None:
            from tilesegcli.train.source import inherited_settings

            inherit = inherited_settings(init_from)
            if "class_names" in overrides and "architecture" not in overrides:
                # other classes: same network, a class head of the new size (loaded fresh)
                arch = inherit["architecture"]
                arch["head_kwargs"] = {**arch.get("head_kwargs", {}),
                                       "num_classes": len(overrides["class_names"])}
            cfg = cfg.with_updates(**inherit)
        out = run(cfg, overrides=overrides)
    click.echo(str(out))


def _parse_thresholds(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise UsageError(f"--thresholds expects numbers separated by commas, got {text!r}") from e
    if not vals or not all(0.0 <= v <= 1.0 for v in vals):
        raise UsageError(f"--thresholds must be values in [0, 1], got {text!r}")
    return vals


def _validate(ckpt: Path, overrides: dict, json_out: Path | None,
              thresholds: list[float] | None = None) -> None:
    from tilesegcli.train.validate import validate_checkpoint, write_json

    res = validate_checkpoint(ckpt, overrides, thresholds)
    if thresholds is not None:
        for t, m in res["thresholds"].items():
            click.echo(f"threshold {t:<6g} " + "  ".join(
                f"{k.upper()} {_f(m[k])}" for k in ("pq", "dq", "sq", "aji", "f1", "dice")))
        if json_out is not None:
            write_json(json_out, {"checkpoint": res["checkpoint"], "step": res["step"],
                                  "thresholds": {str(t): m for t, m in res["thresholds"].items()}})
        return
    for img, m in res["per_image"].items():
        click.echo(f"{img:32s} " + "  ".join(f"{k.upper()} {_f(v)}" for k, v in m.items()))
    click.echo(f"{'MEAN':32s} " + "  ".join(f"{k.upper()} {_f(res['mean'][k])}"
                                            for k in ("pq", "dq", "sq", "aji", "f1", "dice")))
    if json_out is not None:
        write_json(json_out, res)


def _f(v: float) -> str:
    return "nan" if v is None or math.isnan(v) else f"{v:.4f}"
