"""Style recipes: the relative normalization on hand-computed cases, the paper recipe's objective equal to the
paper's formula, the recipe switch in the training config, and the Gatys optimizer under the balanced recipe."""

from __future__ import annotations

import pytest
import torch

from trainer.gatys import optimize
from trainer.losses import (
    RECIPES,
    STYLE_LAYERS,
    StyleObjective,
    StyleRecipe,
    feature_loss,
    gram,
    mean_tv,
    recipe,
    relative_loss,
    style_loss,
    tv_loss,
)
from trainer.train import TrainConfig


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 255


def test_relative_loss_by_hand() -> None:
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    b = torch.tensor([[[[1.0, 0.0], [3.0, 2.0]]]])
    # ||a - b||^2 = 0 + 4 + 0 + 4 = 8; ||b||^2 = 1 + 0 + 9 + 4 = 14
    assert relative_loss(a, b).item() == pytest.approx(8 / 14)
    # per sample, then the batch mean; a target of batch 1 broadcasts
    both = torch.cat([a, b])
    assert relative_loss(both, b).item() == pytest.approx((8 / 14 + 0) / 2)


def test_relative_gram_distance_by_hand() -> None:
    # Two channels over two pixels: psi = [[1, 2], [0, 1]] and [[2, 0], [1, 1]]; G = psi psi^T / (C H W) = / 4.
    x = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]])
    s = torch.tensor([[[[2.0, 0.0]], [[1.0, 1.0]]]])
    gx, gs = gram(x), gram(s)
    torch.testing.assert_close(gx, torch.tensor([[[5.0, 2.0], [2.0, 1.0]]]) / 4)
    torch.testing.assert_close(gs, torch.tensor([[[4.0, 2.0], [2.0, 2.0]]]) / 4)
    # ||gx - gs||^2 = (1 + 0 + 0 + 1) / 16; ||gs||^2 = (16 + 4 + 4 + 4) / 16  ->  2 / 28
    assert relative_loss(gx, gs).item() == pytest.approx(2 / 28)


def test_mean_tv_is_per_pixel_and_size_free() -> None:
    stripes = torch.zeros(1, 3, 4, 4)
    stripes[..., 1::2] = 255.0  # every horizontal neighbour pair differs by 255, vertical pairs by 0
    assert tv_loss(stripes).item() == 3 * 4 * 3 * 255
    assert mean_tv(stripes).item() == pytest.approx(3 * 4 * 3 / (3 * 16))
    big = stripes.repeat(1, 1, 4, 4)
    assert mean_tv(big).item() == pytest.approx(3 * 16 * 15 / (3 * 256), rel=1e-6)


def test_paper_recipe_is_the_paper_formula(random_vgg) -> None:
    """The paper recipe computes bit for bit what percept computed before recipes existed."""
    style, content, y = _rand(1, 3, 32, 32, seed=1), _rand(2, 3, 32, 32, seed=2), _rand(2, 3, 32, 32, seed=3)
    objective = StyleObjective(random_vgg, style, recipe("paper"))
    assert objective.recipe == StyleRecipe(content=1.0, style=1e-4, tv=1e-5)
    with torch.no_grad():
        terms = objective(y, objective.content_features(content))
        feats = random_vgg(y, STYLE_LAYERS)
        targets = {k: gram(v) for k, v in random_vgg(style, STYLE_LAYERS).items()}
        expected_content = feature_loss(feats["relu2_2"], random_vgg(content, ("relu2_2",))["relu2_2"])
        expected_style = style_loss({k: gram(v) for k, v in feats.items()}, targets)
    assert torch.equal(terms["content"], 1.0 * expected_content)
    assert torch.equal(terms["style"], 1e-4 * expected_style)
    assert torch.equal(terms["tv"], 1e-5 * tv_loss(y))


def test_balanced_recipe_terms(random_vgg) -> None:
    style, content, y = _rand(1, 3, 32, 32, seed=1), _rand(1, 3, 32, 32, seed=2), _rand(1, 3, 32, 32, seed=3)
    r = recipe("balanced", layer_weights=(1.0, 0.0, 2.0, 0.0), style=3.0)
    objective = StyleObjective(random_vgg, style, r)
    with torch.no_grad():
        errors = objective.layer_errors(y, objective.content_features(content))
        terms = objective(y, objective.content_features(content))
        feats = random_vgg(y, STYLE_LAYERS)
        target = random_vgg(style, STYLE_LAYERS)
    assert set(errors) == {"content", "tv", *(f"style_{n}" for n in STYLE_LAYERS)}
    for n in STYLE_LAYERS:
        torch.testing.assert_close(errors[f"style_{n}"], relative_loss(gram(feats[n]), gram(target[n])))
    torch.testing.assert_close(terms["style"], 3.0 * (errors["style_relu1_2"] + 2.0 * errors["style_relu3_3"]))
    content_target = random_vgg(content, (r.content_layer,))[r.content_layer]
    torch.testing.assert_close(errors["content"], relative_loss(random_vgg(y, (r.content_layer,))[r.content_layer],
                                                                content_target))
    torch.testing.assert_close(terms["tv"], r.tv * mean_tv(y))
    # the style image itself scores no style error, the photo itself no content error
    with torch.no_grad():
        assert objective.layer_errors(style, objective.content_features(style))["style_relu4_3"].item() < 1e-10
        assert objective.layer_errors(content, objective.content_features(content))["content"].item() == 0.0


def test_recipe_validation() -> None:
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("bold")
    with pytest.raises(ValueError, match="unknown VGG layer"):
        recipe("balanced", content_layer="relu5_3")
    with pytest.raises(ValueError, match="4 style layers but 2 layer weights"):
        recipe("balanced", layer_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="normalization"):
        recipe("paper", normalization="gram")


def test_training_config_resolves_and_records_the_recipe() -> None:
    balanced = TrainConfig(task="style", name="b", style_image="s.png")
    assert balanced.recipe == "balanced"
    assert balanced.style_recipe() == RECIPES["balanced"]
    assert (balanced.content_layer, balanced.normalization) == ("relu3_3", "relative")  # written out, recorded

    paper = TrainConfig(task="style", name="p", style_image="s.png", recipe="paper")
    assert paper.style_recipe() == RECIPES["paper"]
    assert (paper.content_weight, paper.style_weight, paper.tv_weight) == (1.0, 1e-4, 1e-5)

    custom = TrainConfig(task="style", name="c", style_image="s.png", style_weight=30.0, content_layer="relu4_3")
    assert custom.style_recipe() == recipe("balanced", style=30.0, content_layer="relu4_3")

    # A run from before recipes existed resumes and publishes as the paper recipe with its own weights.
    legacy = {"task": "style", "name": "old", "style_image": "s.png", "content_weight": 1.0, "style_weight": 5e-5,
              "tv_weight": 1e-5}
    old = TrainConfig.from_dict(legacy)
    assert old.recipe == "paper" and old.style_recipe() == recipe("paper", style=5e-5)
    assert TrainConfig.from_dict(old.to_dict()) == old

    with pytest.raises(ValueError, match="unknown recipe"):
        TrainConfig(task="style", name="x", style_image="s.png", recipe="bold")


def test_gatys_from_the_photo_moves_under_the_balanced_recipe(shared_data, vgg_weights) -> None:
    """Started from the photo, L-BFGS-B makes progress on the balanced objective (~1, with pixel gradients of
    ~1e-5): the optimizer works in pixels / 255 so that its first unit step is not lost (trainer/gatys.py)."""
    from imaging.tensors import load_image
    from trainer.vgg import load_loss_network

    content = load_image(shared_data / "content" / "chicago.jpg", max_side=96)
    style = load_image(shared_data / "styles" / "la_muse.jpg", max_side=96)
    objective = StyleObjective(load_loss_network(vgg_weights), style, recipe("balanced"))
    result = optimize(objective, content, 4, init="content")
    assert len(result.objective) == 5
    assert result.objective[-1] < 0.8 * result.objective[0], result.objective
    assert (result.image - content).abs().max() > 1.0
    assert result.image.min() >= 0.0 and result.image.max() <= 255.0
