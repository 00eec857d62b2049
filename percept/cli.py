"""The `percept` command: one entry point for training, evaluation, inference and the model store."""

from __future__ import annotations

import typer

from model_store.cli import models_app, stylize, upscale
from service.cli import serve, worker
from trainer.cli import eval_app, optimize, publish, report, style_app, train_app

app = typer.Typer(help="percept: perceptual-loss style transfer and super-resolution.", no_args_is_help=True)
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
