"""The `tileseg` command group. Subcommands live in their own modules and load lazily,
so `tileseg --help` never imports torch, zarr or openslide."""

from __future__ import annotations

import importlib
import sys

import click

from tilesegcli import __version__

# name -> (module, attribute, one-line help); modules import only when the command runs.
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "predict": ("tilesegcli.cli.predict", "predict", "Segment slides/GeoTIFFs and write polygons."),
    "merge": ("tilesegcli.cli.merge", "merge", "Stitch a finished tile store into outputs."),
    "info": ("tilesegcli.cli.info", "info", "Print size, levels, mpp, vendor, CRS of an image."),
    "models": ("tilesegcli.cli.models", "models", "List or show the bundled model cards."),
    "train": ("tilesegcli.cli.train", "train", "Fine-tune a model from annotations."),
    "eval": ("tilesegcli.cli.eval", "eval_cmd", "Score predictions against ground truth."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tileseg")
def cli() -> None:
    """tileseg: segment whole-slide images and GeoTIFFs into QuPath/QGIS polygons.

    \b
    $ tileseg predict slide.svs -o slide.geojson
    $ tileseg info slide.svs --json
    """


def click_error_line(e: click.ClickException) -> str:
    """One line for a click error: its message, and for usage errors where to find help."""
    msg = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError) and ctx is not None:
        msg += f" (see '{ctx.command_path} --help')"
    return msg


def main() -> None:
    """Console-script entry point; maps library errors to one line and an exit code.

    Every error is one line, ``tileseg: error: ...``, click's usage errors included. Exit codes:
    2 usage errors (click's, and TilesegError subclasses with exit_code 2: UsageError, an unknown
    model), 1 failed inputs and other TilesegErrors, 130 interrupted."""
    # OpenMP's wait policy is left to the user: forcing PASSIVE made the aff-nuclei forward 1.4x
    # slower on a quiet 2-core machine (libgomp default: forward 10.7 s vs 14.3-15.4 s for 221
    # tiles). On a machine shared with other busy processes, export OMP_WAIT_POLICY=PASSIVE.
    from tilesegcli.errors import TilesegError

    try:
        cli.main(prog_name="tileseg", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:  # click's own usage errors, in tileseg's one style
        click.echo(f"tileseg: error: {click_error_line(e)}", err=True)
        sys.exit(e.exit_code)
    except TilesegError as e:
        click.echo(f"tileseg: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("tileseg: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
