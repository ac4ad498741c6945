"""`tileseg models`: list the bundled model cards, or show one card in full.

    $ tileseg models
    $ tileseg models --json
    $ tileseg models show aff-mini.ade20k
    $ tileseg models show runs/nuclei/card.json --json
"""

from __future__ import annotations

import json
from pathlib import Path

import click

_WHERE = {"bundled": "bundled", "bundled-missing": "MISSING", "cached": "cached",
          "downloadable": "download", "none": "none"}


def _summary(card) -> dict:
    from tilesegcli.weights import weights_status
    from tilesegcli.zoo import card_domain

    status, path = weights_status(card)
    return {
        "name": card.name, "task": card.task, "domain": card_domain(card),
        "classes": len(card.classes) - 1,
        "mpp": card.mpp, "mpp_unit": card.mpp_unit, "mpp_nominal": card.mpp_nominal,
        "tile_size": card.tile_size, "overlap": card.overlap,
        "weights": "bundled" if card.weights.bundled else (card.weights.url or "none"),
        "weights_status": status, "weights_path": str(path) if path else None,
        "licence": card.licence,
        "description": card.description,
    }


@click.group("models", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List the bundled model cards (name, task, classes, resolution, tile size).

    \b
    $ tileseg models
    $ tileseg models --json | jq '.[].name'
    $ tileseg models show aff-tiny.coco-instance
    """
    if ctx.invoked_subcommand is not None:
        return
    from tilesegcli.zoo import DEFAULT_MODEL, list_cards

    cards = list_cards()
    if as_json:
        click.echo(json.dumps([_summary(c) for c in cards], indent=2))
        return
    from tilesegcli.weights import weights_status
    from tilesegcli.zoo import card_domain, licence_summary

    rows = [("NAME", "TASK", "DOMAIN", "CLASSES", "MPP", "TILE", "WEIGHTS", "LICENCE")]
    for c in cards:
        mpp = "-" if c.mpp is None else f"{c.mpp:g} {c.mpp_unit}" + ("*" if c.mpp_nominal else "")
        name = c.name + (" (default)" if c.name == DEFAULT_MODEL else "")
        rows.append((name, c.task, card_domain(c), str(len(c.classes) - 1), mpp,
                     str(c.tile_size), _WHERE[weights_status(c)[0]], licence_summary(c.licence)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    if any(c.mpp_nominal for c in cards):
        click.echo("* nominal pixel size of a natural-image model (no physical resolution): "
                   "on a microscopy slide it needs --force")
    click.echo("WEIGHTS: bundled with tileseg | cached (downloaded before) | download (on first "
               "use, or `tileseg models fetch NAME`). Full licence: `tileseg models show NAME`.")


@models.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the full card as JSON.")
def show(name: str, as_json: bool) -> None:
    """Show one card (a bundled NAME or a path to a card JSON).

    \b
    $ tileseg models show aff-mini.ade20k
    $ tileseg models show aff-mini.coco --json
    """
    from tilesegcli.weights import weights_status
    from tilesegcli.zoo import card_domain, load_card

    card = load_card(name)
    status, wpath = weights_status(card)
    card_file = (f"bundled with tileseg ({Path(card.base_dir or '.') / (card.name + '.json')})"
                 if card.source == "bundled" else card.source)
    if as_json:
        d = card.to_dict()
        d["card_source"] = card_file
        d["domain"] = card_domain(card)
        d["weights_status"] = status
        d["weights_path"] = str(wpath) if wpath else None
        click.echo(json.dumps(d, indent=2))
        return
    arch = card.architecture
    w = card.weights
    lines = [
        f"name:        {card.name}",
        f"task:        {card.task}",
        f"domain:      {card_domain(card)}",
        f"description: {card.description}",
        f"backbone:    {arch.get('backbone')}  head: {arch.get('head')}",
        f"resolution:  {card.mpp if card.mpp is not None else '-'} {card.mpp_unit}/px"
        + (" (nominal)" if card.mpp_nominal else ""),
        f"tiling:      tile {card.tile_size} px, overlap {card.overlap} px, "
        f"min area {card.min_area} px^2 (trained on {card.train_resolution[0]}x"
        f"{card.train_resolution[1]})",
        f"input:       mean {list(card.mean)} std {list(card.std)} (0-255 scale)",
        f"classes:     {len(card.classes) - 1} + background: "
        + ", ".join(c.name for c in card.classes[1:13])
        + (", ..." if len(card.classes) > 13 else ""),
        f"weights:     {_weights_line(status, wpath, w.url, card.name)}",
        f"sha256:      {w.sha256 or 'unknown (verified by strict loading)'}",
    ]
    if w.url and not w.bundled:
        lines.append(f"url:         {w.url}")
    if card.metrics:
        lines.append("metrics:     " + ", ".join(f"{k} {v}" for k, v in card.metrics.items()))
    lines += [f"licence:     {card.licence}", f"card:        {card_file}"]
    click.echo("\n".join(lines))


def _weights_line(status: str, path: object, url: str | None, name: str) -> str:
    if status == "bundled":
        return f"bundled with tileseg ({path})"
    if status == "bundled-missing":
        return f"bundled but MISSING: expected {path} (reinstall tileseg)"
    if status == "cached":
        return f"downloaded, cached at {path}"
    if status == "downloadable":
        return (f"not downloaded yet: fetched on first use into {path} "
                f"(or `tileseg models fetch {name}`)")
    return "none (pass --weights FILE)"


@models.command("fetch")
@click.argument("name")
@click.option("--from", "src", type=click.Path(exists=True, dir_okay=False),
              help="Install this already downloaded file instead of downloading.")
def fetch(name: str, src: str | None) -> None:
    """Download (or install) a model's weights into the cache and verify them; prints the path.

    Run it once on a machine with network access (e.g. an HPC login node) before offline runs.

    \b
    $ tileseg models fetch aff-mini.coco
    $ tileseg models fetch aff-mini.coco --from ~/Downloads/aff_mini.pth
    """
    from tilesegcli.weights import install_weights, resolve_weights
    from tilesegcli.zoo import load_card

    card = load_card(name)
    path = install_weights(card, src) if src else resolve_weights(card)
    click.echo(str(path))
