"""The `percept` command: one entry point for training, evaluation, inference and the model store.

Errors: a user error is one usage line (typer.BadParameter); anything unexpected that escapes a command is one
line naming the exception and `--debug`, which shows the traceback instead.
"""

from __future__ import annotations

import os

# libgomp reads this once, when torch loads. By default torch's OpenMP threads spin for 300,000 iterations (several
# ms here) after each parallel op before they sleep; between the small ops around an OpenVINO forward (decode,
# blend, rounding) they spun on the cores OpenVINO's own threads were computing on. 1,000: `muse` at 256² through
# the service, 36 -> 28 ms a request (compute 27 -> 21, overhead 8.7 -> 6.7) on 2 cores; eager PyTorch within
# noise (68 vs 70 ms; OMP_WAIT_POLICY=PASSIVE, no spin at all, cost it 12 %). Issue 15.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from typing import Any

import typer
from typer.core import TyperGroup, TyperOption

from model_store.cli import models_app, stylize, upscale
from service.cli import serve, worker
from trainer.cli import eval_app, optimize, publish, report, style_app, train_app

DEBUG_ENV = "PERCEPT_DEBUG"


class _FriendlyGroup(TyperGroup):
    """The root command group: an unexpected exception becomes one line and exit status 1 (not 40-270 lines of
    traceback), unless --debug or PERCEPT_DEBUG=1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):  # usage errors (BadParameter...) and exits
            raise
        except BrokenPipeError:  # `percept ... | head`
            raise typer.Exit(0) from None
        except Exception as e:
            if ctx.params.get("debug") or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            typer.echo(f"Error: {type(e).__name__}{': ' + first if first else ''} "
                       "(run `percept --debug ...` for the traceback)", err=True)
            raise typer.Exit(1) from None


def _no_bool_metavar() -> None:
    """typer (0.29) shows a `<bool>` type for flags, which reads as "takes a value": `--histmatch true` then
    fails with "path 'true' does not exist". A flag takes no value, so it gets no type column."""
    original = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if getattr(self, "is_bool_flag", False) else original(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


if hasattr(TyperOption, "display_type_rich"):
    _no_bool_metavar()

app = typer.Typer(help="percept: perceptual-loss style transfer and super-resolution.", no_args_is_help=True,
                  cls=_FriendlyGroup, pretty_exceptions_show_locals=False)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help=f"Show the traceback of an unexpected error (or set "
                                    f"{DEBUG_ENV}=1).")) -> None:
    """percept: perceptual-loss style transfer and super-resolution."""


app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
models_app.command("publish")(publish)
app.add_typer(models_app, name="models")
app.add_typer(style_app, name="style")
app.command("optimize")(optimize)
app.command("report")(report)
app.command("stylize")(stylize)
app.command("upscale")(upscale)
app.command("serve")(serve)
app.command("worker")(worker)

if __name__ == "__main__":
    app()
