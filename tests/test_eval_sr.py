"""SR evaluation: bicubic baseline and stored models on small crops, and the published bicubic Set5 figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from model_store import store
from model_store.networks import NetworkConfig, build_network
from trainer.evaluate import evaluate_sr, format_sr_table

REPO_ROOT = Path(__file__).resolve().parents[1]
SR_DATA = REPO_ROOT.parent / "shared" / "data" / "sr"
SET5 = SR_DATA / "Set5"

needs_set5 = pytest.mark.skipif(not SET5.is_dir(), reason=f"shared SR data not found at {SET5}")


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    """Two 50x45 crops of Set5 images (not multiples of 4, so the mod-crop is exercised)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    for name in ("bird.png", "butterfly.png"):
        with Image.open(SET5 / name) as im:
            im.crop((60, 60, 110, 105)).save(folder / name)
    return folder


@pytest.fixture
def model_store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("MODEL_STORE", str(root))
    return root


def _check_finite(result: dict, n_images: int) -> None:
    assert len(result["images"]) == n_images
    for key in ("psnr", "ssim", "grad_sr", "grad_hr"):
        assert math.isfinite(result[key])
        assert all(math.isfinite(row[key]) for row in result["images"])
    assert 0 < result["ssim"] <= 1


@needs_set5
def test_bicubic_on_small_images(small_set: Path):
    result = evaluate_sr("bicubic", 4, small_set, degradation="paper")
    _check_finite(result, 2)
    assert [row["image"] for row in result["images"]] == ["bird.png", "butterfly.png"]
    assert result["dataset"] == "tiny" and result["factor"] == 4 and not result["histmatch"]
    # Bicubic upsampling is blurrier than the original.
    assert result["grad_sr"] < result["grad_hr"]


@needs_set5
def test_stored_sr_model(small_set: Path, model_store_dir: Path):
    store.publish("tiny-sr", build_network(NetworkConfig(kind="sr", factor=4, width=0.25)))
    for histmatch in (False, True):
        result = evaluate_sr("tiny-sr", 4, small_set, degradation="standard", histmatch=histmatch)
        _check_finite(result, 2)
        assert result["version"] == 1 and result["histmatch"] == histmatch

    table = format_sr_table([evaluate_sr("bicubic", 4, small_set), result])
    assert "tiny x4 (standard)" in table and "tiny x4 " in table
    assert "bicubic" in table and "tiny-sr v1 +hm" in table


def test_wrong_factor_is_a_clear_error(tmp_path: Path, model_store_dir: Path):
    store.publish("tiny-sr", build_network(NetworkConfig(kind="sr", factor=4, width=0.25)))
    with pytest.raises(ValueError, match=r"upscales by x4, but x8 was requested"):
        evaluate_sr("tiny-sr", 8, tmp_path)


def test_style_model_is_rejected(tmp_path: Path, model_store_dir: Path):
    store.publish("tiny-style", build_network(NetworkConfig(kind="style", width=0.25)))
    with pytest.raises(ValueError, match="not a super-resolution"):
        evaluate_sr("tiny-style", 4, tmp_path)


def test_unknown_degradation(tmp_path: Path):
    with pytest.raises(ValueError, match="degradation"):
        evaluate_sr("bicubic", 4, tmp_path, degradation="jpeg")


def test_format_sr_table_layout():
    results = [
        {"model": "bicubic", "factor": 4, "dataset": "Set5", "degradation": "paper", "psnr": 28.4321, "ssim": 0.81},
        {"model": "bicubic", "factor": 4, "dataset": "Set14", "degradation": "paper", "psnr": 26.0, "ssim": 0.7},
        {"model": "sr4", "version": 2, "factor": 4, "dataset": "Set5", "degradation": "paper", "psnr": 27, "ssim": 0.8},
    ]
    lines = format_sr_table(results).splitlines()
    assert lines[0].split() == ["bicubic", "sr4", "v2"]
    assert lines[2].split() == ["Set5", "x4", "28.43", "/", "0.8100", "27.00", "/", "0.8000"]
    assert lines[3].split() == ["Set14", "x4", "26.00", "/", "0.7000", "-"]


@needs_set5
def test_set5_bicubic_x4_matches_the_literature():
    # Bicubic x4 on Set5, Y channel, border 4: 28.42 dB / 0.8104 (SRCNN, VDSR and later tables).
    result = evaluate_sr("bicubic", 4, SET5, degradation="standard")
    assert len(result["images"]) == 5
    assert result["psnr"] == pytest.approx(28.42, abs=0.15)
    assert result["ssim"] == pytest.approx(0.8104, abs=0.01)


@needs_set5
def test_a_training_checkpoint_scores_like_its_published_model(small_set: Path, tmp_path: Path,
                                                               model_store_dir: Path):
    """`--model run/checkpoints/last.pt` scores a run's checkpoint without publishing it: the same numbers as
    the same weights published, and no store version."""

    net = build_network(NetworkConfig(kind="sr", factor=4, width=0.25))
    torch.save({"model": net.state_dict(), "iteration": 7, "config": "{}", "extra": "{}",
                "network": json.dumps(net.config.to_dict())}, tmp_path / "last.pt")
    store.publish("tiny-sr", net, half=False)
    from_ckpt = evaluate_sr(str(tmp_path / "last.pt"), 4, small_set)
    assert from_ckpt["version"] is None
    assert from_ckpt["psnr"] == pytest.approx(evaluate_sr("tiny-sr", 4, small_set)["psnr"], abs=1e-6)
