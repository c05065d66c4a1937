"""The `bitsearch` command line. One function per command; each docstring is its --help, with an example.

torch and diffusers are imported inside the commands that need them so that `bitsearch --help` (and
commands that only talk to the database) start fast.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from quant.layers import Layer

app = typer.Typer(
    name="bitsearch",
    help="Mixed-precision quantization search for diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    # Errors we expect are reported in one line by `_fail`; anything else is a bug and keeps its traceback.
    pretty_exceptions_enable=False,
)

# Exit status for a bad argument or input (the same code click uses for usage errors).
EXIT_USAGE = 2


def _fail(err: BaseException | str) -> NoReturn:
    """Report an expected error in one line on stderr and exit with EXIT_USAGE."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(EXIT_USAGE)


@app.callback()
def main() -> None:
    """Mixed-precision quantization search for diffusion models."""


@app.command()
def inspect(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Diffusers pipeline directory, model directory (config.json), or built-in name "
            "(sd15-unet, sdxl-unet, dit-xl-2, pixart-alpha).",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")] = False,
    top: Annotated[
        int | None,
        typer.Option("--top", min=1, help="Table shows only the N layers with most MACs (totals cover all)."),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size of the measured forward.")] = 1,
    resolution: Annotated[
        int | None,
        typer.Option(
            "--resolution",
            min=1,
            help="Denoiser input height = width, in latent pixels (SD-1.5: 64 for 512 px images). "
            "Default: the model's config sample_size.",
        ),
    ] = None,
) -> None:
    """List every quantizable layer (nn.Linear, nn.Conv2d) of a denoiser with its MACs per forward.

    The model is built on the meta device (no weights are read), so even SDXL takes seconds.

    Example:

        bitsearch inspect --model sdxl-unet --top 15

        bitsearch inspect --model ./my-sd15-pipeline --resolution 96 --json > layers.json
    """
    from quant.layers import example_inputs, inventory, totals
    from quant.models import load_denoiser

    try:
        denoiser = load_denoiser(model, device="meta")
        inputs = example_inputs(denoiser, batch=batch, resolution=resolution)
        layers = inventory(denoiser, inputs)
    except (ValueError, RuntimeError) as err:  # ModelLoadError, unsupported model, failed forward
        _fail(err)

    summary = totals(layers)
    cls = type(denoiser).__name__
    if as_json:
        doc = {
            "model": model,
            "class": cls,
            "inputs": _shapes(inputs),
            "layers": [
                {
                    "fqn": x.fqn,
                    "kind": x.kind,
                    "weight_shape": list(x.weight_shape),
                    "params": x.params,
                    "macs": x.macs,
                }
                for x in layers
            ],
            "totals": summary,
        }
        json.dump(doc, sys.stdout)
        sys.stdout.write("\n")
        return
    shapes = ", ".join(f"{k} {'x'.join(map(str, v)) if v else v}" for k, v in _shapes(inputs).items())
    _print_inventory_table(f"{model} ({cls})\ninputs: {shapes}", layers, summary, top)


def _print_inventory_table(title: str, layers: list[Layer], summary: dict[str, Any], top: int | None) -> None:
    from rich.console import Console
    from rich.table import Table

    shown = sorted(layers, key=lambda x: x.macs, reverse=True)[:top] if top else layers
    table = Table(title=title, title_justify="left")
    table.add_column("FQN", overflow="fold")
    table.add_column("kind")
    table.add_column("weight shape")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    for x in shown:
        table.add_row(x.fqn, x.kind, "x".join(map(str, x.weight_shape)), f"{x.params:,}", _si(x.macs))
    if top and top < len(layers):
        table.caption = f"top {top} of {len(layers)} layers by MACs"
    console = Console()
    console.print(table)
    console.print(
        f"total: {summary['layers']} layers ({summary['linear']} linear, {summary['conv']} conv), "
        f"{summary['params']:,} params, {summary['gmacs']:,.2f} GMACs"
    )


def _shapes(inputs: dict[str, Any], prefix: str = "") -> dict[str, list[int] | None]:
    """Input shapes by name, nested dicts flattened to `outer.inner`; None stays None."""
    out: dict[str, list[int] | None] = {}
    for key, value in inputs.items():
        if isinstance(value, dict):
            out |= _shapes(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = None if value is None else list(value.shape)
    return out


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


if __name__ == "__main__":
    app()
