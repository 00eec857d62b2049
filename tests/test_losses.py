"""The perceptual losses: hand-computed values, zero on equal inputs, the combined objective and its gradients."""

from __future__ import annotations

import pytest
import torch

from trainer.losses import (
    CONTENT_LAYER,
    STYLE_LAYERS,
    StyleObjective,
    StyleRecipe,
    feature_loss,
    gram,
    lattice_loss,
    pixel_loss,
    style_loss,
    tv_loss,
)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 255.0


def test_gram_hand_computed() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # 1x2x2x2
    # psi = [[1, 2, 3, 4], [0, 1, 0, 1]]; psi psi^T = [[30, 6], [6, 2]]; C*H*W = 8.
    expected = torch.tensor([[[30.0, 6.0], [6.0, 2.0]]]) / 8.0
    torch.testing.assert_close(gram(x), expected)


def test_gram_is_per_sample_symmetric_and_fp32() -> None:
    x = torch.randn(3, 4, 5, 6)
    g = gram(x)
    assert g.shape == (3, 4, 4)
    torch.testing.assert_close(g, g.transpose(1, 2))
    torch.testing.assert_close(g[1:2], gram(x[1:2]))
    assert gram(x.half()).dtype == torch.float32


def test_feature_and_pixel_loss_values() -> None:
    a = torch.zeros(1, 2, 2, 2)
    b = torch.full((1, 2, 2, 2), 2.0)
    assert feature_loss(a, a).item() == 0.0
    assert feature_loss(a, b).item() == pytest.approx(4.0)  # ||2||^2 averaged over C*H*W
    assert pixel_loss(a, b).item() == pytest.approx(4.0)
    # Averaged over the batch: one sample off by 2 everywhere, one identical.
    a2, b2 = torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4, 5)
    b2[0] = 2.0
    assert feature_loss(a2, b2).item() == pytest.approx(2.0)
    y = _rand(2, 3, 8, 9)
    assert pixel_loss(y, y).item() == 0.0
    assert pixel_loss(y, y + 1.0).item() == pytest.approx(1.0)


def test_style_loss_values_and_broadcast() -> None:
    g = {name: torch.randn(2, 4, 4) for name in ("a", "b")}
    assert style_loss(g, g).item() == 0.0
    target = {name: torch.zeros(1, 4, 4) for name in ("a", "b")}  # batch-1 targets broadcast over the batch
    expected = sum(v.pow(2).sum((1, 2)).mean() for v in g.values())
    torch.testing.assert_close(style_loss(g, target), expected)
    shifted = {k: v + 0.5 for k, v in g.items()}
    # Every one of the 16 entries of 2 layers is off by 0.5: 2 * 16 * 0.25.
    assert style_loss(shifted, g).item() == pytest.approx(8.0)


def test_tv_loss_hand_computed() -> None:
    y = torch.tensor([[[[1.0, 4.0], [2.0, 8.0]]]])
    # vertical |2-1| + |8-4| = 5, horizontal |4-1| + |8-2| = 9
    assert tv_loss(y).item() == pytest.approx(14.0)
    assert tv_loss(torch.full((2, 3, 5, 7), 42.0)).item() == 0.0
    z = torch.zeros(1, 3, 4, 6)
    z[0, 1, 2, 3] = 10.0  # one bright pixel: 4 neighbours differ by 10
    assert tv_loss(z).item() == pytest.approx(40.0)
    batch = torch.cat([y, torch.zeros_like(y)])
    assert tv_loss(batch).item() == pytest.approx(7.0)  # mean over the batch


def test_losses_are_positive_for_different_inputs() -> None:
    a, b = _rand(1, 3, 6, 7, seed=1), _rand(1, 3, 6, 7, seed=2)
    assert feature_loss(a, b) > 0
    assert pixel_loss(a, b) > 0
    assert tv_loss(a) > 0
    assert style_loss({"x": gram(a)}, {"x": gram(b)}) > 0


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    return {
        "style": _rand(1, 3, 32, 32, seed=3),
        "content": _rand(1, 3, 32, 32, seed=4),
        "y": _rand(1, 3, 32, 32, seed=5),
    }


def test_objective_total_and_weights(random_vgg, images: dict[str, torch.Tensor]) -> None:
    base = StyleObjective(random_vgg, images["style"], StyleRecipe(content=1.0, style=1.0, tv=1.0))
    cf = base.content_features(images["content"])
    assert cf.shape == (1, 128, 16, 16)
    with torch.no_grad():
        terms = base(images["y"], cf)
        assert set(terms) == {"content", "style", "tv", "total"}
        assert all(terms[k].item() > 0 for k in ("content", "style", "tv"))
        torch.testing.assert_close(terms["total"], terms["content"] + terms["style"] + terms["tv"])
        torch.testing.assert_close(terms["tv"], tv_loss(images["y"]))
        feats = random_vgg(images["y"])
        torch.testing.assert_close(terms["content"], feature_loss(feats[CONTENT_LAYER], cf))
        grams = {k: gram(feats[k]) for k in STYLE_LAYERS}
        torch.testing.assert_close(terms["style"], style_loss(grams, base.style_grams))

        weighted = StyleObjective(random_vgg, images["style"], StyleRecipe(content=2.0, style=0.5, tv=0.0))(
            images["y"], cf
        )
        torch.testing.assert_close(weighted["content"], 2.0 * terms["content"])
        torch.testing.assert_close(weighted["style"], 0.5 * terms["style"])
        assert weighted["tv"].item() == 0.0
        torch.testing.assert_close(weighted["total"], weighted["content"] + weighted["style"])

        # Reproducing the content gives no content loss; reproducing the style image gives no style loss.
        assert base(images["content"], cf)["content"].item() == 0.0
        assert base(images["style"], cf)["style"].item() == pytest.approx(0.0, abs=1e-6)


def test_gradients_reach_the_image_not_the_loss_network(random_vgg, images: dict[str, torch.Tensor]) -> None:
    objective = StyleObjective(random_vgg, images["style"], StyleRecipe(content=1.0, style=10.0, tv=1e-3))
    cf = objective.content_features(images["content"])
    assert not cf.requires_grad
    y = images["y"].clone().requires_grad_(True)
    objective(y, cf)["total"].backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    for p in random_vgg.parameters():
        assert not p.requires_grad
        assert p.grad is None


def test_lattice_loss_charges_a_repeated_subpixel_pattern_not_noise_of_the_same_mse() -> None:
    """The SR grid penalty: one 4x4 pattern added to every block costs much more than white noise of equal MSE,
    a perfect output costs nothing, and the pattern must repeat at the given period to be charged."""
    torch.manual_seed(0)
    target = torch.nn.functional.interpolate(torch.rand(2, 3, 24, 24) * 255, scale_factor=4, mode="bilinear")
    tile = torch.randn(1, 3, 4, 4) * 5
    grid = target + tile.repeat(1, 1, 24, 24)
    noise = target + torch.randn_like(target) * (grid - target).pow(2).mean().sqrt()
    assert lattice_loss(target, target, 4).item() == 0.0
    on_grid, on_noise = lattice_loss(grid, target, 4).item(), lattice_loss(noise, target, 4).item()
    assert on_grid > 50 * on_noise, (on_grid, on_noise)
    assert lattice_loss(grid, target, 3).item() < on_grid / 20  # period 3 does not see a period-4 pattern
    grid.requires_grad_(True)
    lattice_loss(grid, target, 4).backward()
    assert grid.grad is not None and grid.grad.abs().sum() > 0
