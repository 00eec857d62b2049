"""Reading a training checkpoint (`runs/NAME/checkpoints/*.pt`): the trainer writes them, and anything that runs
a network (the CLI, the pipeline, the trainer's publish step) can take one wherever it takes a store model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from model_store.networks import TransformNet, build_network


def read(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, without unpickling arbitrary objects (``weights_only=True``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("config", "network", "extra"):
        ckpt[key] = json.loads(ckpt[key])
    return ckpt


def network(path: str | Path) -> tuple[TransformNet, dict[str, Any]]:
    """The checkpoint's network in eval mode (fp32, on the CPU) and the checkpoint itself."""
    ckpt = read(path)
    net = build_network(ckpt["network"])
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt
