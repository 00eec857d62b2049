"""The optimization baseline of Gatys et al.: L-BFGS on the image itself, kept in [0, 255], from white noise (the
paper's Fig. 5 comparison) or from the photo (the style preview and the recipe sweep: fewer iterations).

"Projected L-BFGS" done properly is L-BFGS-B (Byrd et al. 1995): the bounds [0, 255] are enforced at every
iterate by projection onto the box, and its curvature pairs stay consistent with the projected steps. (Clamping
between the steps of an unconstrained L-BFGS corrupts its history: the objective jumps by orders of magnitude
without a line search and stalls with one; we measured both.) SciPy's L-BFGS-B drives the iterations; PyTorch
computes the objective and its gradient on any device.

It minimizes exactly the objective the feed-forward networks are trained on (`StyleObjective`), so the two
compare directly (the paper's Fig. 5).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy.optimize import minimize

from trainer.losses import StyleObjective


@dataclass
class GatysResult:
    image: torch.Tensor
    # objective[i] and seconds[i]: the objective after i iterations and the time it took to get there.
    objective: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    evaluations: int = 0


def optimize(
    objective: StyleObjective,
    content: torch.Tensor,
    iterations: int = 500,
    *,
    seed: int = 0,
    init: Literal["noise", "content"] = "noise",
    history: int = 100,
    on_iteration: Callable[[int, float], None] | None = None,
) -> GatysResult:
    """Run `iterations` L-BFGS-B iterations for one 1x3xHxW content image in [0, 255], from white noise or from
    the content image itself."""
    shape, device = content.shape, content.device
    # The optimizer's variables are pixels / 255, in [0, 1]. L-BFGS-B's first step has unit norm in its
    # variables: in 0..255 units that moves a 256² image by nothing, and under the balanced recipe (objective ~1,
    # gradient norm ~5e-4) its line search then fails at once and the run ends at the photo (measured).
    if init == "content":
        x0 = (content.detach().double().cpu() / 255.0).numpy().ravel().copy()
    else:
        generator = torch.Generator().manual_seed(seed)
        x0 = torch.rand(shape, generator=generator).double().numpy().ravel()
    content_features = objective.content_features(content)
    result = GatysResult(image=torch.from_numpy(x0 * 255.0).view(shape).float().to(device))

    def value_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        result.evaluations += 1
        x = (torch.from_numpy(flat).view(shape).float().to(device) * 255.0).requires_grad_(True)
        loss = objective(x, content_features)["total"]
        (grad,) = torch.autograd.grad(loss, x)
        return loss.item(), grad.double().cpu().numpy().ravel() * 255.0

    start = time.perf_counter()

    def record(value: float) -> None:
        i = len(result.objective)
        result.objective.append(value)
        result.seconds.append(time.perf_counter() - start)
        if on_iteration:
            on_iteration(i, value)

    record(value_and_grad(x0)[0])
    if iterations <= 0:  # SciPy would still take one step
        return result
    out = minimize(
        value_and_grad, x0, jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * x0.size,
        callback=lambda intermediate_result: record(float(intermediate_result.fun)),
        # Stop only on the iteration count, as the paper's comparison does.
        options={"maxiter": iterations, "maxfun": 20 * iterations + 20, "maxcor": history, "ftol": 0.0,
                 "gtol": 0.0},
    )
    result.image = (torch.from_numpy(out.x).view(shape).float() * 255.0).clamp(0, 255).to(device)
    return result
