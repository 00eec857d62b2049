"""CPU inference backends: which engine (eager PyTorch or OpenVINO) and which precision (fp32 or bf16) run a network.

``PERCEPT_BACKEND=auto|torch|openvino`` and ``PERCEPT_PRECISION=auto|fp32|bf16`` (worker settings) pick one;
`choose` resolves ``auto``, `make_forward` returns the `forward(net, x)` callable that `pipeline.infer` takes;
`pipeline.run` (the CLI, the Python API, evaluation) uses ``auto`` (`default_forward`), as a default worker
does. CUDA keeps its own path (`inference.forward`, fp16 autocast): these backends
are for the CPU.

``auto`` is the fastest combination whose output stays within `TOLERANCE` of eager fp32, among those this machine
has: bf16 only where the CPU computes it natively (`inference.cpu_has_native_bf16`, read from the CPU flags, never
assumed), OpenVINO only when it is installed. The ranking and the tolerance come from these measurements (2 cores,
Xeon with AVX512-BF16; ``muse``; the 13 photos of shared/data/content at 512 px on the long side; outputs clamped
to [0, 255] and compared with eager fp32 on the same input; ``python -m bench.backends``)::

    backend/precision   speed vs eager fp32, 512²   min PSNR vs fp32   max |diff|   99.9th pct |diff|   mean |diff|
    openvino/bf16       see bench (issue: 2.0x)      46.2 dB            24.3         9.8                 0.74
    torch/bf16          see bench (issue: 1.3x)      45.9 dB            23.5         9.6                 0.81
    openvino/fp32       see bench (issue: 1.16x)     106.4 dB           0.009        0.006               0.001
    torch/fp32          1.0x                         (reference)

(Diffs in grey levels on [0, 255].) `TOLERANCE` is PSNR at least 40 dB and no pixel more than 32 grey
levels from fp32: bf16's error is a fraction of a level on average, ~10 levels at the worst 0.1% of pixels
(sharp, saturated edges). All four pass it, so ``auto`` is simply the fastest one this
machine has: openvino/bf16 where bf16 is native, else openvino/fp32; torch in the same order without OpenVINO.

OpenVINO runs `TransformNet.core` (the network without its size-dependent padding, which stays in PyTorch, so one
graph serves every size): converted once per network (cached by the weights' digest, so workers and CLI calls that
load the same model share it), compiled per (network, input shape, precision) into a bounded LRU cache. A compile
takes ~50 ms at 512², a conversion (via ONNX) 1-3 s (the
worker does both for its warm-up sizes at start); a compile holds
only the lock of its own key, so it delays the request of the new shape only, never others.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from model_store import export, inference
from model_store.networks import TransformNet

log = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "openvino"]
Precision = Literal["auto", "fp32", "bf16"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")

# What `auto` accepts against eager fp32 (see the table above): PSNR in dB over [0, 255], and the largest
# per-pixel difference in grey levels.
TOLERANCE = {"psnr_db": 40.0, "max_diff": 32.0}
# Fastest first, as measured; `auto` takes the first that this machine has (all four pass TOLERANCE).
RANKING: tuple[tuple[str, str], ...] = (("openvino", "bf16"), ("torch", "bf16"), ("openvino", "fp32"),
                                        ("torch", "fp32"))

COMPILED_MAX = 32  # compiled (network, shape, precision) kept; each holds its own buffers (a few MB at 512²)
CONVERTED_MAX = 16  # converted networks kept


@dataclass(frozen=True)
class Choice:
    backend: str  # torch | openvino
    precision: str  # fp32 | bf16 on the CPU; fp16 | fp32 on CUDA
    reason: str  # why, for logs and the heartbeat

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def choose(backend: str = "auto", precision: str = "auto", device: torch.device | str = "cpu",
           half: bool = True) -> Choice:
    """Resolve ``auto``; asking explicitly for what this machine lacks is an error (ValueError), never a silent
    fallback (as `inference.resolve_device` does for CUDA)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if device.type != "cpu":
        if backend == "openvino" or precision == "bf16":
            raise ValueError(f"backend {backend!r} / precision {precision!r} are for the CPU; on {device} "
                             "inference runs in PyTorch (fp16 autocast unless half is off)")
        return Choice("torch", "fp16" if half and device.type == "cuda" else "fp32", f"device {device}")
    native = inference.cpu_has_native_bf16()
    has_ov = openvino_available()
    if backend == "openvino" and not has_ov:
        raise ValueError("backend 'openvino' was asked for but the openvino package is not installed")
    if precision == "bf16" and not native:
        raise ValueError("precision 'bf16' was asked for but this CPU has no native bf16 (no avx512_bf16 or "
                         "amx_bf16): emulated bf16 is several times slower than fp32")
    if backend != "auto" and precision != "auto":
        return Choice(backend, precision, "as configured")
    for b, p in RANKING:
        if (backend in ("auto", b) and precision in ("auto", p) and (b != "openvino" or has_ov)
                and (p != "bf16" or native)):
            why = [f"bf16 {'native' if native else 'not native'} on this CPU",
                   f"openvino {'installed' if has_ov else 'not installed'}"]
            return Choice(b, p, "auto: fastest within tolerance of fp32 (" + ", ".join(why) + ")")
    raise AssertionError("unreachable: torch/fp32 is always available")


def make_forward(choice: Choice) -> Callable[[TransformNet, torch.Tensor], torch.Tensor]:
    """The `forward(net, x)` for `pipeline.infer`: 1x3xHxW (or NxCxHxW) in [0, 255] -> float32 output."""
    if choice.backend == "openvino":
        return OpenVINORunner(choice.precision).forward
    if choice.precision == "bf16":
        return torch_bf16_forward
    half = choice.precision == "fp16"
    return lambda net, x: inference.forward(net, x, half=half)


_shared: dict[tuple[str, str], Callable[[TransformNet, torch.Tensor], torch.Tensor]] = {}
_shared_lock = threading.Lock()
_defaults: dict[str, Callable[[TransformNet, torch.Tensor], torch.Tensor]] = {}


def shared_forward(choice: Choice) -> Callable[[TransformNet, torch.Tensor], torch.Tensor]:
    """`make_forward(choice)`, one per process and choice: its compiled models are shared by every caller, and
    no OpenVINO Core is created and dropped per call (the CLI's commands, the Python API, evaluation)."""
    with _shared_lock:
        if (choice.backend, choice.precision) not in _shared:
            _shared[(choice.backend, choice.precision)] = make_forward(choice)
        return _shared[(choice.backend, choice.precision)]


def default_forward(device: torch.device | str = "cpu") -> Callable[[TransformNet, torch.Tensor], torch.Tensor]:
    """The ``auto`` backend's forward for `device`, one per process (its compiled-model cache shared)."""
    key = str(torch.device(device))
    if key not in _defaults:
        choice = choose("auto", "auto", key)
        log.info("default inference backend on %s: %s (%s)", key, choice.label, choice.reason)
        _defaults[key] = shared_forward(choice)
    return _defaults[key]


def torch_bf16_forward(net: TransformNet, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        return net(x.to(next(net.parameters()).device)).float()


def weights_digest(net: torch.nn.Module) -> str:
    """A digest of the config and weights: the same model loaded twice shares its conversion (~1 ms for muse)."""
    h = hashlib.sha1(repr(getattr(net, "config", type(net).__name__)).encode())
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def convert_openvino(net: TransformNet) -> Any:
    """The network's core as an ``openvino.Model`` with dynamic batch, height and width (fp32 weights)."""
    return export.openvino_model(net)


_converted: OrderedDict[str, Any] = OrderedDict()
_converted_lock = threading.Lock()


def converted(net: TransformNet) -> Any:
    key = weights_digest(net)
    with _converted_lock:  # conversions are rare (once per model and process): one at a time
        if key in _converted:
            _converted.move_to_end(key)
            return _converted[key]
        model = convert_openvino(net)
        _converted[key] = model
        while len(_converted) > CONVERTED_MAX:
            _converted.popitem(last=False)
        return model


def ov_shape(shape: tuple[int, ...]) -> Any:
    import openvino as ov

    return ov.PartialShape(list(shape))


class OpenVINORunner:
    """Runs networks with OpenVINO on the CPU, compiled per input shape (bounded LRU)."""

    def __init__(self, precision: str = "fp32", max_compiled: int = COMPILED_MAX):
        import openvino as ov

        self.core = ov.Core()
        self.hint = {"fp32": "f32", "bf16": "bf16"}[precision]
        self.max_compiled = max_compiled
        self.compiled: OrderedDict[tuple[str, tuple[int, ...]], Any] = OrderedDict()
        self.digests: dict[int, tuple[Any, str]] = {}  # id(net) -> (weakref, digest): no rehash per call
        self.lock = threading.Lock()
        self.key_locks: dict[tuple[str, tuple[int, ...]], threading.Lock] = {}
        self.compiles = 0

    def _digest(self, net: TransformNet) -> str:
        import weakref

        entry = self.digests.get(id(net))
        if entry is not None and entry[0]() is net:
            return entry[1]
        digest = weights_digest(net)
        self.digests[id(net)] = (weakref.ref(net), digest)
        return digest

    def compiled_for(self, net: TransformNet, shape: tuple[int, ...]) -> Any:
        key = (self._digest(net), shape)
        with self.lock:
            if key in self.compiled:
                self.compiled.move_to_end(key)
                return self.compiled[key]
            key_lock = self.key_locks.setdefault(key, threading.Lock())
        with key_lock:  # only requests of this shape wait for its compile
            with self.lock:
                if key in self.compiled:
                    return self.compiled[key]
            model = converted(net).clone()
            model.reshape({0: ov_shape(shape)})
            compiled = self.core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": self.hint})
            self.compiles += 1
            with self.lock:
                self.compiled[key] = compiled
                self.key_locks.pop(key, None)
                while len(self.compiled) > self.max_compiled:
                    self.compiled.popitem(last=False)
            log.info("openvino: compiled %s for %s (%s)", key[0][:8], shape, self.hint)
            return compiled

    def forward(self, net: TransformNet, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xp = net.pad_input(x.detach().float().cpu())
        compiled = self.compiled_for(net, tuple(xp.shape))
        # One infer request per call: requests are not thread-safe, and creating one costs ~0.1 ms.
        out = compiled.create_infer_request().infer([xp.contiguous().numpy()])[0]
        f = net.config.factor
        return torch.from_numpy(out.copy())[:, :, : h * f, : w * f]
