"""`tileseg models`: list the bundled model cards, or show one card in full.

    $ tileseg models
    $ tileseg models --json
    $ tileseg models show aff-mini.ade20k
    $ tileseg models show runs/nuclei/card.json --json
"""

from __future__ import annotations

import json

import click


def _summary(card) -> dict:
    return {
        "name": card.name, "task": card.task, "classes": len(card.classes) - 1,
        "mpp": card.mpp, "mpp_unit": card.mpp_unit, "mpp_nominal": card.mpp_nominal,
        "tile_size": card.tile_size, "overlap": card.overlap,
        "weights": "bundled" if card.weights.bundled else (card.weights.url or "none"),
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
    rows = [("NAME", "TASK", "CLASSES", "MPP", "TILE", "WEIGHTS")]
    for c in cards:
        mpp = "-" if c.mpp is None else f"{c.mpp:g} {c.mpp_unit}" + ("*" if c.mpp_nominal else "")
        where = "bundled" if c.weights.bundled else ("download" if c.weights.url else "none")
        name = c.name + (" (default)" if c.name == DEFAULT_MODEL else "")
        rows.append((name, c.task, str(len(c.classes) - 1), mpp, str(c.tile_size), where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    if any(c.mpp_nominal for c in cards):
        click.echo("* nominal pixel size of a natural-image model (no physical resolution)")


@models.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the full card as JSON.")
def show(name: str, as_json: bool) -> None:
    """Show one card (a bundled NAME or a path to a card JSON).

    \b
    $ tileseg models show aff-mini.ade20k
    $ tileseg models show aff-mini.coco --json
    """
    from tilesegcli.weights import weights_dir
    from tilesegcli.zoo import load_card

    card = load_card(name)
    if as_json:
        d = card.to_dict()
        d["source"] = card.source
        click.echo(json.dumps(d, indent=2))
        return
    arch = card.architecture
    w = card.weights
    lines = [
        f"name:        {card.name}",
        f"task:        {card.task}",
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
        f"weights:     {'bundled ' + str(w.filename) if w.bundled else (w.url or 'none')}",
        f"sha256:      {w.sha256 or 'unknown (verified by strict loading)'}",
    ]
    if not w.bundled:
        lines.append(f"cache file:  {weights_dir() / str(w.filename)}")
    if card.metrics:
        lines.append("metrics:     " + ", ".join(f"{k} {v}" for k, v in card.metrics.items()))
    lines += [f"licence:     {card.licence}", f"source:      {card.source}"]
    click.echo("\n".join(lines))


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
