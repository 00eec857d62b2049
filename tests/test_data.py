"""Training data: image discovery, the held-out split, resumable sampling, crops and the SR degradation."""

from __future__ import annotations

import itertools
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data import (
    CropDataset,
    SampleOrder,
    crop_to_multiple,
    degrade,
    find_images,
    split,
    upsample_bicubic,
)


def _write(path: Path, w: int, h: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def _take(order: SampleOrder, n: int) -> list[tuple[int, int]]:
    return list(itertools.islice(iter(order), n))


def _nchw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)


def _hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].permute(1, 2, 0).numpy()


# --- find_images and split ------------------------------------------------------------------------------


def test_find_images_recurses_and_skips_bad_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = [
        _write(tmp_path / "a.png", 20, 20),
        _write(tmp_path / "sub" / "c.PNG", 16, 24),
        _write(tmp_path / "sub" / "deep" / "b.jpg", 30, 20),
    ]
    (tmp_path / "broken.jpg").write_bytes(b"definitely not a jpeg" * 10)
    _write(tmp_path / "sub" / "small.png", 4, 40)
    (tmp_path / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        found = find_images(tmp_path, min_side=8)
    assert found == sorted(good)
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "broken.jpg" in warnings and "small.png" in warnings
    assert "notes.txt" not in warnings
    assert len(find_images(tmp_path)) == 4  # min_side=1: the small image counts


def test_find_images_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")
    (tmp_path / "only.jpg").write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError, match="no usable images"):
        find_images(tmp_path)


def test_split_is_deterministic_and_disjoint() -> None:
    files = [Path(f"/data/img_{i:03d}.jpg") for i in range(20)]
    train, val = split(files, 5)
    assert len(val) == 5 and len(train) == 15
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(files)
    assert train == [f for f in files if f in set(train)]  # training files keep their order
    shuffled = files[:]
    random.Random(0).shuffle(shuffled)
    train2, val2 = split(shuffled, 5)
    assert val2 == val and set(train2) == set(train)  # depends on the names, not on the order
    assert split(files, 0) == (files, [])
    assert len(split(files, 50)[1]) == 10  # at most half the files are held out
    assert split(files[:1], 3) == (files[:1], [])


# --- SampleOrder -----------------------------------------------------------------------------------------


def test_sample_order_is_a_pure_function_of_seed_and_position() -> None:
    stream = _take(SampleOrder(7, seed=3), 40)
    assert stream == _take(SampleOrder(7, seed=3), 40)
    assert stream != _take(SampleOrder(7, seed=4), 40)
    for k in (1, 5, 7, 13):
        assert _take(SampleOrder(7, seed=3, start_sample=k), 40 - k) == stream[k:]
    # Every epoch visits each file exactly once; crop seeds never repeat.
    for epoch in range(40 // 7):
        assert sorted(i for i, _ in stream[epoch * 7 : (epoch + 1) * 7]) == list(range(7))
    assert len({s for _, s in stream}) == len(stream)


@pytest.mark.parametrize("start", [0, 3])
def test_ranks_interleave_to_the_single_rank_stream(start: int) -> None:
    single = _take(SampleOrder(5, seed=1, start_sample=start), 30)
    rank0 = _take(SampleOrder(5, seed=1, start_sample=start, rank=0, world=2), 15)
    rank1 = _take(SampleOrder(5, seed=1, start_sample=start, rank=1, world=2), 15)
    assert [s for pair in zip(rank0, rank1, strict=True) for s in pair] == single


# --- CropDataset ------------------------------------------------------------------------------------------


def test_crop_dataset_shapes_and_determinism(tmp_path: Path) -> None:
    files = [_write(tmp_path / "wide.png", 40, 30, seed=1), _write(tmp_path / "tall.png", 25, 50, seed=2)]
    ds = CropDataset(files, size=16)
    assert len(ds) == 2
    for item in [(0, 11), (1, 12), 0, 1]:
        crop = ds[item]
        assert crop.shape == (3, 16, 16) and crop.dtype == torch.float32
        assert crop.min() >= 0 and crop.max() <= 255
    assert torch.equal(ds[(0, 11)], ds[(0, 11)])
    assert torch.equal(ds[1], ds[1])
    small = CropDataset(files, size=32, resize=False)  # 25 px short side: scaled up to the crop size
    assert small[(1, 5)].shape == (3, 32, 32)


def test_crop_without_resize_is_an_original_patch(tmp_path: Path) -> None:
    path = _write(tmp_path / "hr.png", 20, 18, seed=3)
    original = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.float32)).permute(2, 0, 1)
    ds = CropDataset([path], size=8, resize=False)
    for seed in range(5):
        crop = ds[(0, seed)]
        matches = [
            (y, x)
            for y in range(18 - 8 + 1)
            for x in range(20 - 8 + 1)
            if torch.equal(original[:, y : y + 8, x : x + 8], crop)
        ]
        assert matches, f"crop for seed {seed} is not a patch of the image"
    assert torch.equal(ds[0], original[:, 5:13, 6:14])  # validation: the centre crop


def test_crop_dataset_replaces_an_unreadable_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = _write(tmp_path / "good.png", 20, 20)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    ds = CropDataset([bad, good], size=8)
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        crop = ds[(0, 1)]
    assert crop.shape == (3, 8, 8)
    assert any("bad.png" in r.getMessage() for r in caplog.records)


# --- degradation and the bicubic baseline ---------------------------------------------------------------


def test_degrade_shapes_and_quantization() -> None:
    hr = torch.rand(2, 3, 36, 44, generator=torch.Generator().manual_seed(0)) * 255.0
    for factor in (2, 4):
        lr = degrade(hr, factor)
        assert lr.shape == (2, 3, 36 // factor, 44 // factor)
        assert torch.equal(lr, lr.round())
        assert lr.min() >= 0 and lr.max() <= 255
    soft = degrade(hr, 4, quantize=False)
    assert not torch.equal(soft, soft.round())
    torch.testing.assert_close(degrade(hr, 4), soft.round())
    # The blur removes detail: the blurred result is smoother than the unblurred one.
    assert degrade(hr, 2, blur_sigma=1.0).std() < degrade(hr, 2, blur_sigma=0.0).std()


def test_degrade_keeps_a_constant_image() -> None:
    flat = torch.full((1, 3, 24, 32), 77.0)
    assert torch.equal(degrade(flat, 4, blur_sigma=0.0), torch.full((1, 3, 6, 8), 77.0))
    assert torch.equal(degrade(flat, 4, blur_sigma=1.0), torch.full((1, 3, 6, 8), 77.0))


def test_degrade_matches_pil_bicubic_downscale() -> None:
    array = np.random.default_rng(1).integers(0, 256, (36, 44, 3), dtype=np.uint8).astype(np.float32)
    lr = degrade(_nchw(array), 4, blur_sigma=0.0, quantize=False)
    channels = [Image.fromarray(array[..., c], mode="F") for c in range(3)]
    pil = np.stack([np.asarray(im.resize((11, 9), Image.Resampling.BICUBIC)) for im in channels], axis=-1)
    np.testing.assert_allclose(_hwc(lr), pil, atol=1e-2)


def test_degrade_rejects_sizes_not_multiple_of_factor() -> None:
    with pytest.raises(ValueError, match="multiple"):
        degrade(torch.zeros(1, 3, 37, 44), 4)
    with pytest.raises(ValueError):
        degrade(torch.zeros(1, 3, 36, 45), 2)
    assert crop_to_multiple(torch.zeros(1, 3, 37, 45), 4).shape == (1, 3, 36, 44)


def test_upsample_bicubic_matches_pil() -> None:
    yy, xx = np.mgrid[0:9, 0:11]
    # A smooth ramp away from 0 and 255: PIL's 8-bit intermediate never has to clip.
    smooth = np.stack([40 + yy * 18, 30 + xx * 15, 60 + (yy + xx) * 7], axis=-1).astype(np.uint8)
    for factor in (2, 3, 4):
        out = upsample_bicubic(_nchw(smooth), factor)
        assert out.shape == (1, 3, 9 * factor, 11 * factor)
        pil = np.asarray(Image.fromarray(smooth).resize((11 * factor, 9 * factor), Image.Resampling.BICUBIC))
        np.testing.assert_allclose(_hwc(out), pil.astype(np.float32), atol=1.0)
    # On noise PIL's 8-bit path clips between its two passes; in float (mode F) the kernels agree exactly.
    noise = np.random.default_rng(2).integers(0, 256, (9, 11), dtype=np.uint8).astype(np.float32)
    out = upsample_bicubic(torch.from_numpy(noise)[None, None], 4)
    pil = np.asarray(Image.fromarray(noise, mode="F").resize((44, 36), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(out[0, 0].numpy(), np.clip(pil, 0, 255), atol=1e-2)
    assert out.min() >= 0 and out.max() <= 255
