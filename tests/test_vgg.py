"""The frozen VGG-16 loss network: loading, conventions, frozen state, features and error messages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import trainer.vgg as vgg_module
from trainer.vgg import CONVENTIONS, LAYERS, LossNetwork, LossNetworkError, load_loss_network

CHANNELS = {"relu1_2": 64, "relu2_2": 128, "relu3_3": 256, "relu4_3": 512}
SCALE = {"relu1_2": 1, "relu2_2": 2, "relu3_3": 4, "relu4_3": 8}


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERCEPT_VGG_WEIGHTS", raising=False)
    monkeypatch.delenv("PERCEPT_VGG_CONVENTION", raising=False)


@pytest.fixture(scope="module")
def shared_vgg(vgg_weights: Path) -> LossNetwork:
    return load_loss_network(vgg_weights, convention="auto")


@pytest.fixture(scope="module")
def features_state(random_vgg: LossNetwork) -> dict[str, torch.Tensor]:
    """A complete conv1_1..conv4_3 state dict in `features` layout, without the 'features.' prefix."""
    return {k: v.clone() for k, v in random_vgg.features.state_dict().items()}


@pytest.fixture
def fast_features(random_vgg: LossNetwork, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each load builds a whole torchvision VGG-16 (about 1.5 s, mostly its unused classifier) for its first 23
    layers: tests that load many small files copy one already built by the real `_features` instead."""
    template = random_vgg.features
    monkeypatch.setattr(vgg_module, "_features", lambda: copy.deepcopy(template))


def _assert_frozen(net: LossNetwork) -> None:
    assert not net.training and not any(m.training for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())


def test_shared_weights_load_frozen_with_caffe_convention(shared_vgg: LossNetwork, vgg_weights: Path) -> None:
    assert shared_vgg.convention == "caffe"
    assert shared_vgg.source == str(vgg_weights)
    _assert_frozen(shared_vgg)
    shared_vgg.train()
    _assert_frozen(shared_vgg)
    assert shared_vgg.train(True) is shared_vgg
    _assert_frozen(shared_vgg)
    with safe_open(str(vgg_weights), framework="pt") as f:
        torch.testing.assert_close(shared_vgg.features[0].weight, f.get_tensor("features.0.weight").float())
        torch.testing.assert_close(shared_vgg.features[21].bias, f.get_tensor("features.21.bias").float())


@pytest.mark.usefixtures("fast_features")
def test_default_path_comes_from_settings(vgg_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERCEPT_VGG_WEIGHTS", str(vgg_weights))
    net = load_loss_network()
    assert net.source == str(vgg_weights) and net.convention == "caffe"


def test_features_have_the_right_channels_and_sizes(shared_vgg: LossNetwork) -> None:
    x = torch.rand(2, 3, 32, 48) * 255.0
    with torch.no_grad():
        out = shared_vgg(x)
    assert list(out) == list(LAYERS)
    for name, t in out.items():
        assert t.shape == (2, CHANNELS[name], 32 // SCALE[name], 48 // SCALE[name])
        assert t.min() >= 0.0  # ReLU outputs
        assert t.abs().sum() > 0
    with torch.no_grad():
        only = shared_vgg(x, ("relu2_2",))
    assert list(only) == ["relu2_2"]
    torch.testing.assert_close(only["relu2_2"], out["relu2_2"])


def test_features_are_not_modified_in_place(random_vgg: LossNetwork) -> None:
    # The losses read relu1_2 while later layers run; an in-place ReLU chain would corrupt earlier outputs.
    assert not any(m.inplace for m in random_vgg.features if isinstance(m, nn.ReLU))
    x = torch.rand(1, 3, 16, 16) * 255.0
    with torch.no_grad():
        early = random_vgg(x, ("relu1_2",))["relu1_2"]
        both = random_vgg(x, ("relu1_2", "relu4_3"))
    torch.testing.assert_close(both["relu1_2"], early)


@pytest.mark.usefixtures("fast_features")
def test_wrong_shapes_are_rejected(tmp_path: Path, features_state: dict[str, torch.Tensor]) -> None:
    state = {f"features.{k}": v for k, v in features_state.items()}
    state["features.0.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, path)
    with pytest.raises(LossNetworkError) as info:
        load_loss_network(path)
    message = str(info.value)
    assert "(8, 3, 3, 3)" in message and "(64, 3, 3, 3)" in message
    assert str(path) in message


@pytest.mark.usefixtures("fast_features")
def test_incomplete_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "partial.safetensors"
    save_file({"features.0.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(LossNetworkError, match="missing") as info:
        load_loss_network(path)
    assert "(8, 3, 3, 3)" in str(info.value)


def test_missing_file_names_the_path_and_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "nowhere" / "vgg.safetensors"
    with pytest.raises(LossNetworkError) as info:
        load_loss_network(path)
    assert str(path) in str(info.value) and "PERCEPT_VGG_WEIGHTS" in str(info.value)
    monkeypatch.setenv("PERCEPT_VGG_WEIGHTS", str(path))
    with pytest.raises(LossNetworkError, match="PERCEPT_VGG_WEIGHTS") as info:
        load_loss_network()
    assert str(path) in str(info.value)


@pytest.mark.usefixtures("fast_features")
def test_torchvision_pth_loads_with_torchvision_convention(
    tmp_path: Path, features_state: dict[str, torch.Tensor]
) -> None:
    state = {f"features.{k}": v for k, v in features_state.items()}
    state["classifier.0.weight"] = torch.zeros(4, 2)
    state["classifier.0.bias"] = torch.zeros(4)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    net = load_loss_network(path)
    assert net.convention == "torchvision"
    _assert_frozen(net)
    for k, v in features_state.items():
        torch.testing.assert_close(net.features.state_dict()[k], v)
    # A bare `features` state dict (no prefix) wrapped in {"state_dict": ...} loads too.
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": dict(features_state)}, wrapped)
    assert load_loss_network(wrapped).convention == "torchvision"


@pytest.mark.usefixtures("fast_features")
def test_convention_from_metadata_argument_and_environment(
    tmp_path: Path, features_state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file(features_state, plain)
    assert load_loss_network(plain).convention == "caffe"
    tagged = tmp_path / "tagged.safetensors"
    save_file(features_state, tagged, metadata={"input_convention": "torchvision"})
    assert load_loss_network(tagged).convention == "torchvision"
    assert load_loss_network(tagged, convention="caffe").convention == "caffe"
    monkeypatch.setenv("PERCEPT_VGG_CONVENTION", "torchvision")
    assert load_loss_network(plain).convention == "torchvision"
    monkeypatch.setenv("PERCEPT_VGG_CONVENTION", "bgr")
    with pytest.raises(LossNetworkError, match="convention"):
        load_loss_network(plain)


def _normalized(convention: str, x: torch.Tensor) -> torch.Tensor:
    """What the features see: identity layers expose the normalized input at relu1_2's index."""
    net = LossNetwork(nn.Sequential(*[nn.Identity() for _ in range(LAYERS["relu4_3"] + 1)]), convention, "test")
    return net(x, ("relu1_2",))["relu1_2"]


def test_conventions_normalize_as_documented() -> None:
    x = torch.rand(2, 3, 5, 6) * 255.0
    caffe_mean = torch.tensor([123.68, 116.779, 103.939]).view(1, 3, 1, 1)
    torch.testing.assert_close(_normalized("caffe", x), x - caffe_mean)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(_normalized("torchvision", x), (x / 255.0 - mean) / std)
    assert set(CONVENTIONS) == {"caffe", "torchvision"}
    with pytest.raises(LossNetworkError):
        LossNetwork(nn.Sequential(nn.Identity()), "bgr", "test")
