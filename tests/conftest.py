"""Shared fixtures: a throwaway model store, the shared data folder and loss networks built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VGG_WEIGHTS = SHARED_DATA / "weights" / "vgg16_relu4_3.safetensors"

# The tests use tiny tensors: one intra-op thread is faster than two and avoids long OpenMP stalls when the
# cores are busy with other work.
torch.set_num_threads(1)


@pytest.fixture
def tmp_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MODEL_STORE root; publishing and lookups go there (the built-in store is still searched)."""
    root = tmp_path / "store"
    root.mkdir()
    monkeypatch.setenv("MODEL_STORE", str(root))
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def vgg_weights(shared_data: Path) -> Path:
    if not VGG_WEIGHTS.is_file():
        pytest.skip(f"VGG-16 weights not found at {VGG_WEIGHTS}")
    return VGG_WEIGHTS


@pytest.fixture(scope="session")
def random_vgg():
    """An untrained (seeded) loss network: frozen, so one instance serves every test."""
    from trainer.vgg import load_loss_network

    return load_loss_network(random_weights=True)
