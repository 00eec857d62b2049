"""CPU inference backends (model_store.backends): what `auto` picks, the default backend's output within the stated
tolerance of eager fp32, OpenVINO's per-shape compile cache and odd sizes, and the choice in the heartbeat."""

from __future__ import annotations

import math

import pytest
import torch

from model_store import backends, inference, store
from model_store.networks import NetworkConfig, build_network
from worker.memory_queue import MemoryQueue
from worker.runner import Worker
from worker.settings import WorkerSettings

openvino = pytest.mark.skipif(not backends.openvino_available(), reason="openvino is not installed")


def photo_like(h: int = 48, w: int = 64) -> torch.Tensor:
    """Smooth gradients, a hard-edged square and mild noise: the kinds of content bf16 rounding differs on."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([255 * x, 255 * y, 128 + 100 * torch.sin(6 * x + 4 * y)])
    img[:, h // 4: h // 2, w // 4: w // 2] = torch.tensor([250.0, 20.0, 30.0])[:, None, None]
    img += torch.randn(img.shape, generator=torch.Generator().manual_seed(0)) * 4
    return img.clamp(0, 255)[None]


def test_default_backend_output_is_within_the_stated_tolerance_of_fp32() -> None:
    net, _ = store.load("muse")
    x = photo_like()
    reference = inference.forward(net, x).clamp(0, 255)
    out = backends.default_forward("cpu")(net, x).clamp(0, 255)
    assert out.shape == reference.shape
    mse = float(((out - reference) ** 2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    assert psnr >= backends.TOLERANCE["psnr_db"], psnr
    assert float((out - reference).abs().max()) <= backends.TOLERANCE["max_diff"]


def test_auto_takes_bf16_only_where_native_and_openvino_only_when_installed(monkeypatch) -> None:
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    assert backends.choose().label == "openvino/fp32"
    with pytest.raises(ValueError, match="native bf16"):
        backends.choose("torch", "bf16")
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    assert backends.choose().label == "openvino/bf16"
    assert backends.choose("torch").label == "torch/bf16"
    assert backends.choose(precision="fp32").label == "openvino/fp32"
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    assert backends.choose().label == "torch/bf16"
    with pytest.raises(ValueError, match="not installed"):
        backends.choose("openvino")


def test_cuda_keeps_its_own_path_and_refuses_cpu_backends() -> None:
    assert backends.choose(device="cuda").label == "torch/fp16"
    assert backends.choose(device="cuda", half=False).label == "torch/fp32"
    with pytest.raises(ValueError, match="for the CPU"):
        backends.choose("openvino", device="cuda")


@openvino
@pytest.mark.parametrize("kind", ["style", "sr"])
def test_openvino_matches_torch_at_any_size(kind: str) -> None:
    """The padding stays in PyTorch, so odd and tiny sizes come out exactly H x W (x factor), as eager does."""
    torch.manual_seed(0)
    config = NetworkConfig(kind=kind, width=0.25, residual_blocks=1, **({"factor": 2} if kind == "sr" else {}))
    net = build_network(config).eval()
    run = backends.OpenVINORunner("fp32", max_compiled=2)
    for h, w in [(37, 50), (3, 2), (37, 50), (16, 16)]:
        x = torch.rand(1, 3, h, w) * 255
        out, ref = run.forward(net, x), inference.forward(net, x)
        assert out.shape == ref.shape
        assert (out - ref).abs().max() < 0.05
    assert run.compiles == 3  # 37x50 compiled once, reused
    assert len(run.compiled) == 2  # bounded: the least recently used shape was dropped


@openvino
def test_worker_reports_its_backend_in_the_heartbeat(monkeypatch) -> None:
    queue = MemoryQueue()
    worker = Worker(queue, WorkerSettings(device="cpu", warmup_sizes="", backend="openvino", precision="fp32"))
    worker.heartbeat(force=True)
    (beat,) = queue.workers(60)
    assert beat["backend"] == "openvino/fp32"
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="native bf16"):  # asked for and absent: refused, not emulated slowly
        Worker(queue, WorkerSettings(device="cpu", backend="torch", precision="bf16"))
