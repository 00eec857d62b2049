"""The training loop on tiny synthetic images: losses go down, the run folder, exact resume, checkpoints and
publishing, Ctrl-C in a real `percept train` process, and DDP with gloo on two CPU processes."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import free_port
from PIL import Image

from model_store import store
from trainer.train import (
    TrainConfig,
    load_checkpoint,
    network_from_checkpoint,
    publish_checkpoint,
    resume_config,
    train,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
STYLE_TERMS = ("content", "style", "tv", "total")


def synthetic_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth colour field plus a sinusoidal texture and a little noise: enough structure to learn from."""
    base = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).resize((width, height),
                                                                                 Image.Resampling.BICUBIC)
    a = np.asarray(base).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    fx, fy = rng.uniform(0.2, 0.6, 2)
    a += 40 * np.sin(xx * fx + yy * fy)[..., None]
    a += rng.normal(0, 8, a.shape)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 80x72 training photos (also the preview images)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        synthetic_image(rng, 80, 72).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def style_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("style") / "style.png"
    synthetic_image(np.random.default_rng(1), 64, 48).save(path)
    return path


def _env(images: Path, runs: Path) -> dict[str, str]:
    return {"PERCEPT_PREVIEW_DIR": str(images), "PERCEPT_RUNS": str(runs), "PERCEPT_DATA": str(images)}


@pytest.fixture(autouse=True)
def trainer_env(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in _env(images, tmp_path / "runs").items():
        monkeypatch.setenv(k, v)


def tiny_config(images: Path, run_dir: Path, **overrides: Any) -> TrainConfig:
    options: dict[str, Any] = dict(
        name="tiny", data=str(images), iterations=20, batch_size=2, image_size=32, width=0.25, workers=0,
        val_images=1, val_every=1, log_every=1, preview_every=10, checkpoint_every=10, random_vgg=True,
        run_dir=str(run_dir), seed=0,
    )
    options.update(overrides)
    return TrainConfig(**options)


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def assert_loss_decreased(records: list[dict[str, Any]]) -> None:
    """Training losses (noisy: random crops) fall on average; the validation loss (fixed images) falls clearly."""
    assert [r["iteration"] for r in records] == list(range(1, 21))
    totals = [r["total"] for r in records]
    assert all(math.isfinite(t) for t in totals)
    assert np.mean(totals[-5:]) < 0.9 * np.mean(totals[:5]), totals
    val = [r["val_total"] for r in records]
    assert val[-1] < 0.75 * val[0], val


@pytest.fixture(scope="module")
def style_run(images: Path, style_image: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One 20-iteration style run shared by the tests that inspect its outputs."""
    run_dir = tmp_path_factory.mktemp("style_run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in _env(images, run_dir.parent / "runs").items():
            mp.setenv(k, v)
        cfg = tiny_config(images, run_dir, task="style", style_image=str(style_image), style_size=48)
        summary = train(cfg)
    return summary, run_dir


def test_style_training_lowers_the_loss(style_run: tuple[dict, Path]) -> None:
    summary, run_dir = style_run
    records = read_log(run_dir)
    assert_loss_decreased(records)
    assert summary["iteration"] == 20 and summary["interrupted"] is False
    assert summary["losses"] == {k: records[-1][k] for k in STYLE_TERMS}


@pytest.mark.parametrize("loss", ["pixel", "feat"])
def test_sr_training_lowers_the_loss(images: Path, tmp_path: Path, loss: str) -> None:
    run_dir = tmp_path / "sr"
    summary = train(tiny_config(images, run_dir, task="sr", factor=4, loss=loss, tv_weight=0.0))
    records = read_log(run_dir)
    assert_loss_decreased(records)
    assert set(records[-1]) >= {loss, "total", f"val_{loss}", "val_total"} and "tv" not in records[-1]
    assert summary["iteration"] == 20
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["network"]["kind"] == "sr" and ckpt["network"]["factor"] == 4
    # The SR previews show the bicubic upsampling above the network's output, at the HR size.
    with Image.open(run_dir / "previews" / "final.png") as im:
        assert im.size == (4 * 288, 2 * 288)


def test_run_dir_contents(style_run: tuple[dict, Path], style_image: Path) -> None:
    summary, run_dir = style_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"] == "style" and config["iterations"] == 20 and config["run_dir"] == str(run_dir)
    assert config["style_image"] == str(style_image) and config["random_vgg"] is True

    for rec in read_log(run_dir):  # every line is one JSON object with every term
        for key in ("iteration", "time", "it_per_s", *STYLE_TERMS, *(f"val_{k}" for k in STYLE_TERMS)):
            assert isinstance(rec[key], (int, float)) and math.isfinite(rec[key]), (key, rec)
        assert rec["it_per_s"] >= 0
        assert math.isclose(rec["total"], rec["content"] + rec["style"] + rec["tv"], rel_tol=1e-5)

    with Image.open(run_dir / "losses.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    previews = sorted(p.name for p in (run_dir / "previews").glob("*.png"))
    assert previews == ["final.png", "iter_000010.png", "iter_000020.png"]
    with Image.open(run_dir / "previews" / "iter_000010.png") as im:
        assert im.size == (4 * 32, 2 * 32)  # four preview images: inputs above outputs
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert summary["checkpoint"] == str(run_dir / "checkpoints" / "last.pt")
    assert not list(run_dir.rglob("*.tmp"))


def test_checkpoint_loads_and_publishes(style_run: tuple[dict, Path], tmp_store: Path) -> None:
    _, run_dir = style_run
    path = run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)  # weights_only=True: plain tensors and strings only
    assert ckpt["iteration"] == 20
    assert ckpt["config"]["task"] == "style" and ckpt["config"]["width"] == 0.25
    assert ckpt["network"]["kind"] == "style"
    assert set(ckpt["extra"]) >= {"losses", "wall_seconds", "hardware"}
    assert ckpt["optimizer"]["state"] and ckpt["scaler"] is None
    net, _ = network_from_checkpoint(path)

    published = publish_checkpoint(path, "tiny-style")
    assert published["name"] == "tiny-style" and published["version"] == 1
    assert Path(published["path"]).parent.parent == tmp_store
    loaded, entry = store.load("tiny-style")
    training = entry.manifest["training"]
    assert training["iterations"] == 20 and training["task"] == "style"
    assert training["style_weight"] == ckpt["config"]["style_weight"]
    assert training["content_weight"] == ckpt["config"]["content_weight"]
    assert training["grad_clip"] == ckpt["config"]["grad_clip"]
    assert training["style_image"] == "style.png" and training["final_losses"] == ckpt["extra"]["losses"]
    with Image.open(entry.path / store.STYLE_FILE) as im:
        assert max(im.size) == 48  # the style image as trained (style_size)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=2.0)  # fp16 weights in the store


def test_resume_reproduces_the_uninterrupted_run(images: Path, style_image: Path, tmp_path: Path) -> None:
    common = dict(task="style", style_image=str(style_image), style_size=48, val_every=0, preview_every=0,
                  checkpoint_every=0)
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    train(tiny_config(images, full_dir, iterations=6, **common))
    train(tiny_config(images, part_dir, iterations=3, **common))
    ckpt = part_dir / "checkpoints" / "last.pt"
    assert load_checkpoint(ckpt)["iteration"] == 3

    with pytest.raises(ValueError, match="keeps its configuration"):
        resume_config(ckpt, lr=1.0)
    cfg = resume_config(ckpt, iterations=6)
    assert cfg.run_dir == str(part_dir) and cfg.iterations == 6
    summary = train(cfg, resume=ckpt)
    assert summary["iteration"] == 6

    full, resumed = read_log(full_dir), read_log(part_dir)
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for key in STYLE_TERMS:
        a = torch.tensor([r[key] for r in full], dtype=torch.float64)
        b = torch.tensor([r[key] for r in resumed], dtype=torch.float64)
        assert torch.equal(a, b), key
    a_state = load_checkpoint(full_dir / "checkpoints" / "last.pt")["model"]
    b_state = load_checkpoint(ckpt)["model"]
    assert all(torch.allclose(a_state[k], b_state[k], rtol=1e-5, atol=1e-6) for k in a_state)


def _cli_env(images: Path, runs: Path, vgg_weights: Path) -> dict[str, str]:
    env = dict(os.environ, **_env(images, runs), PERCEPT_VGG_WEIGHTS=str(vgg_weights), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _summary(stdout: str) -> dict[str, Any]:
    """The JSON summary `percept train` prints last (a Ctrl-C notice may come before it)."""
    return json.loads(stdout[stdout.index("{\n"):])


def test_sigint_saves_a_checkpoint_and_exits_cleanly(
    images: Path, style_image: Path, vgg_weights: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "percept.cli", "train", "style", "--style-image", str(style_image),
           "--style-size", "48", "--name", "sigint", "--data", str(images), "--iterations", "100000",
           "--batch-size", "2", "--image-size", "32", "--width", "0.25", "--workers", "0", "--run-dir", str(run_dir),
           "--checkpoint-every", "1", "--preview-every", "1000", "--val-every", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_cli_env(images, tmp_path / "runs", vgg_weights),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.pt").exists():  # written atomically at iteration 1
            if proc.poll() is not None:
                pytest.fail(f"training exited early ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint after 120 s")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    summary = _summary(stdout)
    assert summary["interrupted"] is True
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert 0 < ckpt["iteration"] < 100000 and ckpt["iteration"] == summary["iteration"]
    assert (run_dir / "previews" / "final.png").is_file()


def test_ddp_gloo_two_processes(images: Path, vgg_weights: Path, tmp_path: Path) -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    run_dir, logs = tmp_path / "run", tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "--log-dir", str(logs), "--redirects", "1",  # each rank's stdout in its own file
           "-m", "percept.cli", "train", "sr", "--factor", "4", "--loss", "pixel", "--name", "ddp",
           "--data", str(images), "--iterations", "4", "--batch-size", "2", "--image-size", "32", "--width", "0.25",
           "--workers", "0", "--device", "cpu", "--run-dir", str(run_dir), "--checkpoint-every", "2",
           "--preview-every", "2", "--val-every", "2"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=_cli_env(images, tmp_path / "runs", vgg_weights),
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]

    outputs = {int(p.parent.name): p.read_text() for p in logs.rglob("stdout.log")}
    assert sorted(outputs) == [0, 1]
    rank0, rank1 = _summary(outputs[0]), _summary(outputs[1])
    assert rank0["iteration"] == rank1["iteration"] == 4
    assert rank0["checkpoint"] == str(run_dir / "checkpoints" / "last.pt") and rank0["interrupted"] is False
    assert "checkpoint" not in rank1 and "interrupted" not in rank1  # rank 1 only trains

    records = read_log(run_dir)  # log_every is 10: one line, at the last iteration, written once
    assert [r["iteration"] for r in records] == [4]
    assert set(records[0]) >= {"pixel", "total", "it_per_s", "val_pixel", "val_total"}
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["iteration"] == 4 and ckpt["config"]["task"] == "sr" and ckpt["network"]["factor"] == 4
    # rank 0 alone writes: the last checkpoint and the best (validated once, at iteration 4)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["iteration"] == 4
    assert sorted(p.name for p in (run_dir / "previews").iterdir()) == ["final.png", "iter_000002.png",
                                                                        "iter_000004.png"]
    assert (run_dir / "losses.png").is_file() and (run_dir / "config.json").is_file()


def test_grad_clip_caps_the_gradient_norm() -> None:
    from trainer.train import optimizer_step

    w = torch.nn.Parameter(torch.ones(10))
    opt = torch.optim.SGD([w], lr=1.0)
    optimizer_step((1000.0 * w).sum(), opt, None, grad_clip=0.5)
    assert torch.linalg.vector_norm(w.grad) <= 0.5 + 1e-6
    assert torch.allclose(w.detach(), torch.ones(10) - w.grad)  # the step used the clipped gradient
    optimizer_step((1000.0 * w).sum(), opt, None)
    assert torch.allclose(w.grad, torch.full((10,), 1000.0))  # off by default


def test_best_checkpoint_is_the_lowest_validation_objective(style_run: tuple[dict, Path], tmp_store: Path) -> None:
    summary, run_dir = style_run
    records = read_log(run_dir)
    best_record = min(records, key=lambda r: r["val_total"])  # first of equals, as training keeps the first
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["iteration"] == best_record["iteration"] == summary["best"]["iteration"]
    assert summary["best"]["val_total"] == best_record["val_total"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["extra"]["best"] == summary["best"]

    from trainer.train import best_checkpoint

    assert best_checkpoint(run_dir / "checkpoints" / "last.pt") == run_dir / "checkpoints" / "best.pt"
    assert best_checkpoint(run_dir) == run_dir / "checkpoints" / "best.pt"
    assert best_checkpoint(run_dir / "checkpoints" / "best.pt") == run_dir / "checkpoints" / "best.pt"
    published = publish_checkpoint(best_checkpoint(run_dir), "tiny-best")
    manifest = store.get("tiny-best", published["version"]).manifest
    assert manifest["training"]["iterations"] == best_record["iteration"]
    assert manifest["training"]["best_validation"] == summary["best"]
    assert manifest["training"]["recipe"] == "balanced" and manifest["training"]["normalization"] == "relative"


def test_a_run_can_start_from_published_weights(images: Path, style_image: Path, tmp_path: Path,
                                               tmp_store: Path) -> None:
    common = dict(task="style", style_image=str(style_image), style_size=48, val_every=0, preview_every=0,
                  checkpoint_every=0, iterations=2)
    first = train(tiny_config(images, tmp_path / "a", **common))
    publish_checkpoint(first["checkpoint"], "tiny-init")
    from trainer.train import initial_weights

    net, _ = network_from_checkpoint(first["checkpoint"])
    state, source = initial_weights("tiny-init", net.config)
    assert source == "tiny-init@1"  # the parent's version, for the manifest
    for k, v in net.state_dict().items():
        torch.testing.assert_close(state[k], v, atol=1e-2, rtol=1e-3)  # through fp16 in the store
    second = train(tiny_config(images, tmp_path / "b", init_from="tiny-init", **common))
    assert second["iteration"] == 2
    assert load_checkpoint(second["checkpoint"])["config"]["init_from"] == "tiny-init@1"
    with pytest.raises(ValueError, match="network"):
        train(tiny_config(images, tmp_path / "c", init_from="tiny-init", **{**common, "width": 0.5}))


def test_paper_recipe_trains_as_before(images: Path, style_image: Path, tmp_path: Path) -> None:
    """--recipe paper is the objective of the v1 models: its first logged losses are the paper's terms of the
    network's first output on the first batch."""
    from torch.utils.data import DataLoader

    from model_store.networks import build_network
    from trainer import data
    from trainer.losses import feature_loss, gram, style_loss, tv_loss
    from trainer.train import load_style_image
    from trainer.vgg import load_loss_network

    cfg = tiny_config(images, tmp_path / "p", task="style", style_image=str(style_image), style_size=48,
                      recipe="paper", iterations=1, val_every=0, preview_every=0, checkpoint_every=0)
    assert (cfg.content_layer, cfg.normalization, cfg.style_weight) == ("relu2_2", "none", 1e-4)
    torch.manual_seed(cfg.seed)  # as train() does before it builds the network
    net = build_network(cfg.network_config())
    files, _ = data.split(data.find_images(images, min_side=64), cfg.val_images)
    loader = DataLoader(data.CropDataset(files, 32, resize=True), batch_size=2,
                        sampler=data.SampleOrder(len(files), cfg.seed, 0, 0, 1))
    batch = next(iter(loader))
    vgg = load_loss_network(random_weights=True)
    style = load_style_image(cfg, torch.device("cpu"))
    with torch.no_grad():
        y = net(batch)
        f, fc = vgg(y), vgg(batch, ("relu2_2",))
        targets = {k: gram(v) for k, v in vgg(style).items()}
        expected = (feature_loss(f["relu2_2"], fc["relu2_2"]) + 1e-4 * style_loss({k: gram(v) for k, v in f.items()},
                                                                                  targets) + 1e-5 * tv_loss(y))
    train(cfg)
    assert read_log(tmp_path / "p")[0]["total"] == pytest.approx(expected.item(), rel=1e-5)


def test_models_publish_takes_the_best_checkpoint_unless_told(style_run: tuple[dict, Path], tmp_store: Path) -> None:
    from typer.testing import CliRunner

    from percept.cli import app

    _, original = style_run
    run_dir = tmp_store.parent / "run"
    shutil.copytree(original, run_dir)
    # Mark the best checkpoint so that it cannot be mistaken for the last one, whatever the run's curve was.
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    torch.save({**best, "iteration": 7}, run_dir / "checkpoints" / "best.pt")
    runner = CliRunner()
    for args, expected in (([run_dir / "checkpoints" / "last.pt"], 7), ([run_dir], 7),
                           ([run_dir / "checkpoints" / "last.pt", "--last"], 20), ([run_dir, "--last"], 20)):
        result = runner.invoke(app, ["models", "publish", *map(str, args), "--name", "tiny-cli"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert Path(out["checkpoint"]).name == ("best.pt" if expected == 7 else "last.pt")
        assert store.get("tiny-cli", out["version"]).manifest["training"]["iterations"] == expected
