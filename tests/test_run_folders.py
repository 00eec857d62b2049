"""Files where users expect them (issue 16): training runs under ./runs of the current folder (or PERCEPT_RUNS),
the folder printed first, a reused run name refused unless --overwrite, no config.json after a failed start,
absolute data/style paths in config.json, and --resume from another folder with the data moved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from percept.cli import app
from trainer import train as train_module
from trainer.train import TrainConfig, train

runner = CliRunner()


def invoke(*args: Any):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def photos(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


@pytest.fixture
def fake_train(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """train() replaced by one that records its config and writes what a run writes first."""
    calls: list[TrainConfig] = []

    def fake(cfg: TrainConfig, resume: Any = None) -> dict[str, Any]:
        calls.append(cfg)
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.run_dir) / "config.json").write_text(json.dumps(cfg.to_dict()))
        return {"run_dir": cfg.run_dir}

    monkeypatch.setattr(train_module, "train", fake)
    return calls


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PERCEPT_RUNS", raising=False)
    return tmp_path


def test_runs_go_under_runs_of_the_current_folder(in_tmp: Path, fake_train: list[TrainConfig],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    photos(in_tmp / "my_photos")
    style = in_tmp / "style.png"
    Image.new("RGB", (32, 32), (200, 40, 10)).save(style)
    result = invoke("train", "style", "--name", "mine", "--style-image", "style.png", "--data", "my_photos",
                    "--iterations", "1")
    assert result.exit_code == 0, result.output
    run = in_tmp / "runs" / "mine"
    assert result.stdout.splitlines()[0] == f"run folder: {run}"  # printed before the run starts
    (cfg,) = fake_train
    assert Path(cfg.run_dir) == run
    assert cfg.data == str(in_tmp / "my_photos") and cfg.style_image == str(style)  # absolute, as typed relative

    monkeypatch.setenv("PERCEPT_RUNS", str(in_tmp / "elsewhere"))
    result = invoke("train", "sr", "--name", "big", "--data", "my_photos", "--iterations", "1")
    assert result.exit_code == 0, result.output
    assert Path(fake_train[-1].run_dir) == in_tmp / "elsewhere" / "big"


def test_a_reused_run_name_is_refused_unless_overwrite(in_tmp: Path, fake_train: list[TrainConfig]) -> None:
    photos(in_tmp / "p")
    run = in_tmp / "runs" / "again"
    (run / "checkpoints").mkdir(parents=True)
    (run / "log.jsonl").write_text('{"iteration": 10}\n')
    (run / "checkpoints" / "last.pt").write_bytes(b"old")
    (run / "notes.md").write_text("mine")

    result = invoke("train", "sr", "--name", "again", "--data", "p")
    assert result.exit_code == 2 and not fake_train
    text = " ".join(result.output.split())
    assert "holds another run" in text and "--overwrite" in text and "--resume" in text
    assert (run / "log.jsonl").read_text() == '{"iteration": 10}\n'  # untouched

    result = invoke("train", "sr", "--name", "again", "--data", "p", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (run / "log.jsonl").exists() and not (run / "checkpoints").exists()  # the old run's files went
    assert (run / "notes.md").read_text() == "mine"  # what the run did not write stays


def test_a_failed_start_leaves_no_config(in_tmp: Path, vgg_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERCEPT_VGG_WEIGHTS", str(vgg_weights))
    (in_tmp / "empty").mkdir()
    result = invoke("train", "sr", "--name", "nothing", "--data", "empty", "--workers", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no usable images" in " ".join(result.output.split())
    assert not (in_tmp / "runs" / "nothing" / "config.json").exists()
    # and the name is free for the next try
    assert not train_module.run_exists(in_tmp / "runs" / "nothing")


def test_resume_from_another_folder_with_the_data_moved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = photos(tmp_path / "a" / "photos", count=6)
    run = tmp_path / "a" / "runs" / "tiny"
    train(TrainConfig(task="sr", name="tiny", data=str(data), factor=4, loss="pixel", iterations=2, batch_size=2,
                      image_size=32, width=0.25, workers=0, val_images=1, val_every=0, preview_every=0,
                      checkpoint_every=2, log_every=1, random_vgg=True, run_dir=str(run), seed=0))
    moved = tmp_path / "b" / "photos"
    moved.parent.mkdir()
    shutil.move(data, moved)
    monkeypatch.chdir(tmp_path / "b")
    result = invoke("train", "sr", "--resume", run / "checkpoints" / "last.pt", "--data", "photos",
                    "--iterations", "3")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["data"] == str(moved)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3]


def test_a_long_cpu_run_says_how_long_first(in_tmp: Path, fake_train: list[TrainConfig]) -> None:
    photos(in_tmp / "p")
    result = invoke("train", "sr", "--name", "long", "--data", "p", "--device", "cpu")  # the default 40k
    assert result.exit_code == 0, result.output
    assert "note: 40,000 iterations on the CPU take about 10 h" in result.output
    result = invoke("train", "sr", "--name", "short", "--data", "p", "--device", "cpu", "--iterations", "500")
    assert "note:" not in result.output
