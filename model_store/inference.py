"""Where and in what precision a network runs: the device policy and the forward pass every caller shares.

Images are float RGB tensors, 1x3xHxW, values in [0, 255].
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """'auto' = CUDA when present, else the CPU; asking for CUDA without it is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available")
    return torch.device(name)


def forward(net: torch.nn.Module, x: torch.Tensor, half: bool = False) -> torch.Tensor:
    """`net(x)` on the net's device, float32 out, no autograd.

    `half` (CUDA only): fp16 autocast and channels_last, recomputed in fp32 when the output holds NaN/Inf (an
    instance norm over a large flat area can overflow fp16). The net's train/eval mode is left as it is:
    `store.load` returns nets in eval mode, which is what inference wants.
    """
    param = next(net.parameters())
    x = x.to(param.device)
    with torch.inference_mode():
        if half and param.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                y = net(x.contiguous(memory_format=torch.channels_last)).float()
            if torch.isfinite(y).all():
                return y
            log.warning("fp16 output has NaN/Inf: recomputing in fp32")
        return net(x.to(param.dtype)).float()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 is faster than fp32; elsewhere
    PyTorch emulates it and it is several times slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: ask oneDNN
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "avx512_bf16" in flags or "amx_bf16" in flags

