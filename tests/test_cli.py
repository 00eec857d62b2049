"""The `percept` command line, in process: every command's help, evaluation, the Gatys optimizer, the model store
and local inference with the built-in models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from model_store import store
from percept.cli import app

BUILTIN_MODELS = ("muse", "starry_night", "wave", "candy", "mosaic", "udnie", "sr_x4", "sr_x8", "sr_x4_pixel",
                  "sr_x8_pixel")
COMMANDS = (
    [], ["train"], ["train", "style"], ["train", "sr"], ["optimize"], ["eval"], ["eval", "sr"], ["eval", "style"],
    ["models"], ["models", "list"], ["models", "show"], ["models", "publish"], ["stylize"], ["upscale"],
    ["style"], ["style", "preview"],
)

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def random_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    small.resize((width, height), Image.Resampling.BICUBIC).save(path)
    return path


@pytest.fixture(autouse=True)
def empty_store(tmp_store: Path) -> Path:
    """Every test sees only the built-in models (and publishes nothing into the package)."""
    return tmp_store


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "percept")
def test_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.fixture
def set5_crops(shared_data: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "set5_tiny"
    folder.mkdir()
    for name in ("bird.png", "butterfly.png"):
        with Image.open(shared_data / "sr" / "Set5" / name) as im:
            im.crop((60, 60, 112, 108)).save(folder / name)
    return folder


def test_eval_sr_bicubic_table_and_json(set5_crops: Path) -> None:
    result = invoke("eval", "sr", "--model", "bicubic", "--factor", "4", "--data", set5_crops)
    assert result.exit_code == 0, result.output
    assert "set5_tiny x4" in result.stdout and "bicubic" in result.stdout and "PSNR" in result.stdout
    psnr, ssim = map(float, re.search(r"(\d+\.\d\d) / (\d\.\d{4})", result.stdout).groups())
    assert 10 < psnr < 60 and 0 < ssim <= 1

    result = invoke("eval", "sr", "--model", "bicubic", "--factor", "4", "--data", set5_crops, "--json")
    assert result.exit_code == 0, result.output
    (data,) = json.loads(result.stdout)
    assert data["model"] == "bicubic" and data["factor"] == 4 and data["dataset"] == "set5_tiny"
    assert [row["image"] for row in data["images"]] == ["bird.png", "butterfly.png"]
    assert data["psnr"] == pytest.approx(psnr, abs=0.005)


def test_eval_sr_rejects_a_style_model(set5_crops: Path) -> None:
    result = invoke("eval", "sr", "--model", "muse", "--factor", "4", "--data", set5_crops)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "muse v" in result.output and "not a super-resolution" in result.output and "Traceback" not in result.output


def test_optimize_writes_image_and_trace(vgg_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERCEPT_VGG_WEIGHTS", str(vgg_weights))
    content = random_image(tmp_path / "content.png", 48, 40, seed=1)
    style = random_image(tmp_path / "style.png", 40, 40, seed=2)
    out = tmp_path / "out" / "out.png"
    result = invoke("optimize", "--content", content, "--style", style, "--iterations", "3", "--image-size", "32",
                    "--output", out, "--json")
    assert result.exit_code == 0, result.output
    trace = json.loads(result.stdout)
    assert trace["output"] == str(out)
    assert len(trace["objective"]) == 4 and len(trace["seconds"]) == 4
    assert trace["objective"][-1] < trace["objective"][0]
    assert trace["recipe"]["normalization"] == "relative" and trace["recipe"]["content_layer"] == "relu3_3"
    with Image.open(out) as im:
        assert im.size == (32, 27)  # the content image shrunk to a longer side of 32


def test_optimize_takes_the_paper_recipe(vgg_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERCEPT_VGG_WEIGHTS", str(vgg_weights))
    content = random_image(tmp_path / "content.png", 32, 32, seed=1)
    style = random_image(tmp_path / "style.png", 32, 32, seed=2)
    result = invoke("optimize", "--content", content, "--style", style, "--iterations", "1", "--image-size", "32",
                    "--output", tmp_path / "o.png", "--json", "--recipe", "paper", "--style-weight", "2e-4")
    assert result.exit_code == 0, result.output
    recipe = json.loads(result.stdout)["recipe"]
    assert (recipe["content_layer"], recipe["normalization"], recipe["style"], recipe["tv"]) == (
        "relu2_2", "none", 2e-4, 1e-5)
    result = invoke("optimize", "--content", content, "--style", style, "--output", tmp_path / "o.png",
                    "--recipe", "bold")
    assert result.exit_code != 0 and "unknown recipe 'bold'" in result.output and "Traceback" not in result.output


def test_style_preview_writes_a_grid(vgg_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERCEPT_VGG_WEIGHTS", str(vgg_weights))
    photos = [random_image(tmp_path / f"p{i}.png", 40, 32, seed=i) for i in range(2)]
    style = random_image(tmp_path / "style.png", 48, 48, seed=9)
    out = tmp_path / "preview" / "grid.png"
    result = invoke("style", "preview", style, "--photo", photos[0], "--photo", photos[1], "--image-size", "32",
                    "--iterations", "3", "--output", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "p0.png: content" in result.output
    with Image.open(out) as grid:
        # a row with the style image, then one row per photo: photo | result, square tiles of 192 px
        assert grid.size == (2 * 192, 3 * 192)
        photo_tile = np.asarray(grid.crop((0, 192, 192, 384)), dtype=np.float32)
        result_tile = np.asarray(grid.crop((192, 192, 384, 384)), dtype=np.float32)
    assert np.abs(photo_tile - result_tile).mean() > 1.0  # the optimizer changed the photo

    result = invoke("style", "preview", style, "--photo", photos[0], "--output", tmp_path / "grid.gif")
    assert result.exit_code != 0 and "--output must end in" in result.output
    result = invoke("style", "preview", style, "--photo", photos[0], "--content-layer", "relu9_9")
    assert result.exit_code != 0 and "unknown VGG layer" in result.output and "Traceback" not in result.output


def test_models_list_and_show() -> None:
    result = invoke("models", "list")
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert set(BUILTIN_MODELS) <= set(listed)

    result = invoke("models", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(BUILTIN_MODELS) <= set(rows)
    assert rows["muse"]["kind"] == "style" and rows["sr_x8"]["kind"] == "sr" and rows["sr_x8"]["factor"] == 8

    result = invoke("models", "show", "sr_x4", "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["name"] == "sr_x4" and manifest["factor"] == 4


def test_stylize_keeps_the_size(tmp_path: Path) -> None:
    src = random_image(tmp_path / "in.png", 40, 28)
    dst = tmp_path / "out.png"
    result = invoke("stylize", "--model", "muse", src, dst)
    assert result.exit_code == 0, result.output
    assert f"muse v{max(store.versions('muse'))}" in result.stdout  # the newest version by default
    with Image.open(dst) as im:
        assert im.size == (40, 28) and im.mode == "RGB"


@pytest.mark.parametrize(("loss", "model"), [([], "sr_x4"), (["--loss", "pixel"], "sr_x4_pixel")])
def test_upscale_by_four(loss: list[str], model: str, tmp_path: Path) -> None:
    src = random_image(tmp_path / "in.png", 16, 12)
    dst = tmp_path / "out.png"
    result = invoke("upscale", "--factor", "4", *loss, src, dst)
    assert result.exit_code == 0, result.output
    assert f"({model} v{max(store.versions(model))}, " in result.stdout  # the newest version
    with Image.open(dst) as im:
        assert im.size == (64, 48)


@pytest.mark.parametrize(("command", "named"), [(["stylize", "--model", "no_such_model"], "no_such_model"),
                                                (["upscale", "--model", "no_such_model"], "no_such_model"),
                                                (["upscale", "--loss", "l1"], "'l1'")])
def test_unknown_model_is_a_clean_error(command: list[str], named: str, tmp_path: Path) -> None:
    src = random_image(tmp_path / "in.png", 16, 12)
    result = invoke(*command, src, tmp_path / "out.png")
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)  # a usage error, not an exception escaping the command
    assert named in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.png").exists()


def test_models_show_unknown_model() -> None:
    result = invoke("models", "show", "no_such_model")
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "no_such_model" in result.output and "Traceback" not in result.output


def test_folder_mode_is_recursive_names_outputs_and_skips_existing(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    (src / "trip").mkdir(parents=True)
    (src / ".cache").mkdir()
    random_image(src / "a.png", 20, 16)
    random_image(src / "trip" / "b.jpg", 16, 20, seed=1)
    random_image(src / ".cache" / "hidden.png", 8, 8)
    (src / "trip" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"

    result = invoke("stylize", "--model", "muse", src, out)
    assert result.exit_code == 1, result.output  # the bad file fails the run, after the good ones
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a_muse.png", "trip/b_muse.jpg"]  # subfolders kept, NAME_<style>.ext, hidden skipped
    assert "notes.txt" in result.output and "Traceback" not in result.output
    assert "2 done, 0 skipped (output exists), 1 failed" in result.stdout

    (out / "a_muse.png").write_bytes(b"kept")
    result = invoke("stylize", "--model", "muse", src, out, "--skip-existing")
    assert "0 done, 2 skipped (output exists), 1 failed" in result.stdout
    assert (out / "a_muse.png").read_bytes() == b"kept"

    (src / "trip" / "notes.txt").unlink()
    result = invoke("upscale", src, out, "--suffix", "-big", "--format", "webp")
    assert result.exit_code == 0, result.output
    assert "2 done, 0 skipped (output exists), 0 failed" in result.stdout
    with Image.open(out / "trip" / "b-big.webp") as im:
        assert im.size == (64, 80)
    assert (out / "a_x4.png").exists() is False  # --suffix replaced the default _x4


def test_folder_mode_into_the_input_folder(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    random_image(folder / "a.png", 16, 12)
    result = invoke("stylize", "--model", "muse", folder, folder, "--suffix", "")
    assert result.exit_code == 2 and "--suffix" in result.output  # would replace the inputs
    for _ in range(2):  # the second run does not take the first run's output for an input
        result = invoke("stylize", "--model", "muse", folder, folder)
        assert result.exit_code == 0 and "1 done" in result.stdout, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_muse.png"]


def test_a_file_into_a_folder_gets_a_named_output(tmp_path: Path) -> None:
    src = random_image(tmp_path / "in.jpg", 16, 12)
    (tmp_path / "out").mkdir()
    result = invoke("stylize", "--model", "muse", src, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "in_muse.jpg").is_file()


def test_unexpected_errors_are_one_line_unless_debug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from model_store import pipeline

    def boom(*args, **kwargs):
        raise ValueError("something broke\nsecond line")

    monkeypatch.setattr(pipeline, "load", boom)
    src = random_image(tmp_path / "in.png", 16, 12)
    result = invoke("stylize", "--model", "muse", src, tmp_path / "o.png")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines() == [
        "Error: ValueError: something broke (run `percept --debug ...` for the traceback)"]
    result = invoke("--debug", "stylize", "--model", "muse", src, tmp_path / "o.png")
    assert isinstance(result.exception, ValueError)  # --debug lets it through (typer prints the traceback)


def _commands(command, path=()):
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))
    if not hasattr(command, "commands"):
        yield path, command


def test_every_device_option_defaults_to_auto_and_flags_take_no_value() -> None:
    import typer

    devices = {" ".join(path): p.default for path, cmd in _commands(typer.main.get_command(app))
               for p in cmd.params if p.name == "device"}
    assert {"stylize", "upscale", "train style", "train sr", "eval sr", "optimize"} <= set(devices)
    # serve/worker: None = PERCEPT_DEVICE, whose default is auto
    assert {k: v for k, v in devices.items() if v not in ("auto", None)} == {}

    result = invoke("upscale", "--help")
    assert "--no-histmatch" in result.output and "<bool>" not in result.output
    result = invoke("stylize", "--help")
    assert "*  --model" in result.output  # required options are marked


def test_upscale_factor_error_lists_only_sr_models(tmp_path: Path) -> None:
    src = random_image(tmp_path / "in.png", 16, 12)
    result = invoke("upscale", "--factor", "3", src, tmp_path / "o.png")
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "no x3 SR model" in text and "feat: x4, x8" in text and "pixel: x4" in text
    assert "muse" not in text and "candy" not in text


def test_models_list_tells_the_sr_losses_apart() -> None:
    result = invoke("models", "list")
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:] if line.strip()}
    assert lines["sr_x4"][2:5] == ["sr", "x4", "feat"] and lines["sr_x4_pixel"][2:5] == ["sr", "x4", "pixel"]
    assert lines["muse"][3] == "-"
    rows = {r["name"]: r for r in json.loads(invoke("models", "list", "--json").stdout)}
    assert (rows["sr_x4"]["loss"], rows["sr_x4_pixel"]["loss"], rows["muse"]["loss"]) == ("feat", "pixel", None)


def test_backend_and_precision_flags_pick_the_engine(tmp_path: Path) -> None:
    """--backend/--precision (or PERCEPT_BACKEND/PERCEPT_PRECISION) choose the engine, which the summary names;
    torch/fp32 gives eager PyTorch's pixels; what the machine cannot do is a one-line error."""
    from imaging import tensors
    from model_store import pipeline

    src = random_image(tmp_path / "in.png", 40, 28)
    result = invoke("stylize", src, tmp_path / "fp32.png", "--model", "muse", "--backend", "torch",
                    "--precision", "fp32")
    assert result.exit_code == 0 and "torch/fp32" in result.output, result.output
    net, _ = pipeline.load("muse", "cpu")
    eager = pipeline.run(net, tensors.read(src), forward=lambda n, x: n(x))
    written = np.asarray(Image.open(tmp_path / "fp32.png"), dtype=np.float32)
    assert np.abs(written - tensors.to_array(eager)).max() <= 0.51  # PNG rounding only
    via_env = runner.invoke(app, ["stylize", str(src), str(tmp_path / "env.png"), "--model", "muse"],
                            env={"COLUMNS": "200", "PERCEPT_BACKEND": "torch", "PERCEPT_PRECISION": "fp32"})
    assert via_env.exit_code == 0 and "torch/fp32" in via_env.output, via_env.output
    bad = invoke("upscale", src, tmp_path / "x.png", "--backend", "tensorrt")
    assert bad.exit_code == 2 and "backend must be one of auto, torch, openvino" in bad.output
    assert "Traceback" not in bad.output


@pytest.mark.parametrize(("given", "expected"), [(None, "1000"), ("5", "5")])
def test_the_cli_sets_openmp_spinning_short_before_torch_loads(given: str | None, expected: str) -> None:
    """`percept` sets GOMP_SPINCOUNT (unless the environment has it) before anything imports torch: libgomp reads
    it only once, as torch loads, so a setting made later would do nothing."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | ({"GOMP_SPINCOUNT": given} if given else {})
    probe = "import os, percept.cli; print(os.environ['GOMP_SPINCOUNT'])"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected

    early = subprocess.run([sys.executable, "-c", "import sys, percept; print('torch' in sys.modules)"], env=env,
                           capture_output=True, text=True, check=True)
    assert early.stdout.strip() == "False"  # nothing before percept/cli.py's first lines loads torch
