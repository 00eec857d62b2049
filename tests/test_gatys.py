"""The Gatys et al. optimization baseline: it lowers the shared objective and keeps the image in [0, 255]."""

from __future__ import annotations

import pytest
import torch

from trainer.gatys import optimize
from trainer.losses import StyleObjective, StyleRecipe


@pytest.fixture(scope="module")
def setup(random_vgg) -> tuple[StyleObjective, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    style = torch.rand(1, 3, 32, 32, generator=g) * 255.0
    content = torch.rand(1, 3, 32, 32, generator=g) * 255.0
    return StyleObjective(random_vgg, style, StyleRecipe(content=1.0, style=5.0, tv=1e-6)), content


def test_objective_decreases_and_image_stays_in_range(setup: tuple[StyleObjective, torch.Tensor]) -> None:
    objective, content = setup
    seen: list[tuple[int, float]] = []
    result = optimize(objective, content, iterations=10, on_iteration=lambda i, v: seen.append((i, v)))
    assert len(result.objective) == 11 and len(result.seconds) == 11
    assert seen == list(enumerate(result.objective))
    assert all(b >= a for a, b in zip(result.seconds, result.seconds[1:], strict=False))
    assert all(torch.isfinite(torch.tensor(result.objective)))
    assert result.objective[-1] < 0.7 * result.objective[0]
    # L-BFGS-B's line search accepts only steps that decrease the objective.
    assert all(b <= a for a, b in zip(result.objective, result.objective[1:], strict=False))

    image = result.image
    assert image.shape == content.shape and not image.requires_grad
    assert image.min() >= 0.0 and image.max() <= 255.0
    # The last value is the objective of the returned (projected) image.
    with torch.no_grad():
        final = objective(image, objective.content_features(content))["total"].item()
    assert final == pytest.approx(result.objective[-1], rel=1e-5)


def test_runs_are_seeded(setup: tuple[StyleObjective, torch.Tensor]) -> None:
    objective, content = setup
    a = optimize(objective, content, iterations=1, seed=3)
    b = optimize(objective, content, iterations=1, seed=3)
    c = optimize(objective, content, iterations=1, seed=4)
    assert len(a.objective) == 2
    assert torch.equal(a.image, b.image) and a.objective == b.objective
    assert a.objective[0] != c.objective[0]  # a different white-noise start
    assert not torch.equal(a.image, c.image)
