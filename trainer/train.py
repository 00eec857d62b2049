"""The training loop for style and super-resolution networks.

One function, `train(config)`, runs both tasks: Adam on a `TransformNet`, VGG-16 perceptual losses, a progress
bar with every loss term, previews of fixed images, a JSONL loss log and its plot, periodic checkpoints,
exact resume, a checkpoint on Ctrl-C, mixed precision and DDP (``torchrun``) on CUDA or, for tests, gloo on CPU.

A run directory holds::

    config.json  log.jsonl  losses.png  previews/iter_NNNNNN.png  checkpoints/last.pt  checkpoints/best.pt

``best.pt`` is the checkpoint with the lowest validation objective so far; publishing takes it unless told
otherwise, because a style run's last iterate is not its best one (the objective is noisy and can drift).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from imaging.tensors import to_pil
from model_store import store
from model_store.checkpoints import network as network_from_checkpoint
from model_store.checkpoints import read as load_checkpoint
from model_store.inference import cpu_has_native_bf16, resolve_device
from model_store.networks import NetworkConfig, TransformNet, build_network
from trainer import data
from trainer.losses import (
    CONTENT_LAYER,
    DEFAULT_RECIPE,
    RECIPES,
    StyleObjective,
    StyleRecipe,
    feature_loss,
    lattice_loss,
    pixel_loss,
    tv_loss,
)
from trainer.settings import settings
from trainer.vgg import LossNetwork, load_loss_network

log = logging.getLogger(__name__)

BEST_FILE = "best.pt"
LAST_FILE = "last.pt"


@dataclass
class TrainConfig:
    """Every option of a run; saved in the run folder and in checkpoints."""

    task: Literal["style", "sr"]
    name: str
    style_image: str | None = None
    factor: int = 4
    loss: Literal["feat", "pixel"] = "feat"
    data: str = field(default_factory=lambda: str(settings().data_dir))
    iterations: int = 40_000
    batch_size: int = 4
    image_size: int = 256  # style crops; SR uses 288x288 HR patches unless set
    style_size: int | None = None  # None: the style image's own size, capped at 512 px
    # The style objective: a named recipe (trainer.losses.RECIPES); a field left None takes the recipe's value,
    # and __post_init__ writes the resolved values back so config.json and the manifest record every choice.
    recipe: str = DEFAULT_RECIPE
    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float | None = None
    content_layer: str | None = None
    layer_weights: list[float] | None = None  # one per style layer (relu1_2, relu2_2, relu3_3, relu4_3)
    normalization: str | None = None  # none | relative
    init_from: str | None = None  # start from these weights: a model in the store (NAME or NAME@V) or a .pt
    # SR with loss=feat: weight of an added pixel (MSE) term; the ESRGAN recipe keeps a small one so a feature-loss
    # fine-tune of the pixel network stays faithful to the image's colours and low frequencies.
    pixel_weight: float = 0.0
    # SR: weight of `losses.lattice_loss`, the grid at the upsampling period that the feature loss cannot see.
    lattice_weight: float = 0.0
    preset: Literal["paper", "modern"] = "modern"
    width: float = 1.0
    lr: float = 1e-3
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool = True  # CUDA only
    workers: int = 2
    val_images: int = 16
    val_every: int = 500
    preview_every: int = 500
    checkpoint_every: int = 1000
    log_every: int = 10
    run_dir: str | None = None
    vgg_weights: str | None = None
    random_vgg: bool = False  # tests only: an untrained loss network
    publish: bool = False

    def __post_init__(self) -> None:
        if self.task == "sr":  # SR: the feature (or pixel) loss at weight 1, no TV unless asked
            self.content_weight = 1.0 if self.content_weight is None else self.content_weight
            self.tv_weight = 0.0 if self.tv_weight is None else self.tv_weight
            return
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; use one of {sorted(RECIPES)}")
        r = self.style_recipe()
        self.content_weight, self.style_weight, self.tv_weight = r.content, r.style, r.tv
        self.content_layer, self.layer_weights, self.normalization = r.content_layer, list(r.layer_weights), \
            r.normalization

    def style_recipe(self) -> StyleRecipe:
        """The run's objective: its named recipe with this config's explicit choices applied."""
        base = RECIPES[self.recipe]
        given = {"content": self.content_weight, "style": self.style_weight, "tv": self.tv_weight,
                 "content_layer": self.content_layer, "normalization": self.normalization,
                 "layer_weights": tuple(self.layer_weights) if self.layer_weights is not None else None}
        return StyleRecipe.from_dict({**base.to_dict(), **{k: v for k, v in given.items() if v is not None}})

    def network_config(self) -> NetworkConfig:
        if self.task == "style":
            return NetworkConfig(kind="style", preset=self.preset, width=self.width)
        return NetworkConfig(kind="sr", preset=self.preset, width=self.width, factor=self.factor)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        if d.get("task") == "style" and "recipe" not in d:
            known["recipe"] = "paper"  # runs from before recipes existed were trained with the paper's
        return cls(**known)


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on a CUDA GPU that has it (else fp16) and on a CPU with native bf16 (AMX / AVX512-BF16: measured 1.6x
    faster per 256² batch-4 style step than fp32 on 2 cores); None (fp32) elsewhere, where bf16 is emulated."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def load_style_image(cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """The style image as the run sees it: longer side `style_size` exactly, else its own size capped at 512."""
    assert cfg.style_image
    return data.load_style(cfg.style_image, cfg.style_size).to(device)


class Losses:
    """Computes the weighted loss terms of one batch for the run's task."""

    def __init__(self, cfg: TrainConfig, vgg: LossNetwork, device: torch.device):
        self.cfg = cfg
        self.vgg = vgg
        self.style: StyleObjective | None = None
        if cfg.task == "style":
            if not cfg.style_image:
                raise ValueError("style training needs --style-image")
            self.style = StyleObjective(vgg, load_style_image(cfg, device), cfg.style_recipe())

    def inputs_and_targets(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.task == "style":
            return batch, batch
        return data.degrade(batch, self.cfg.factor), batch

    def __call__(self, y: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.style is not None:
            return self.style(y, self.style.content_features(target))
        if self.cfg.loss == "pixel":
            terms = {"pixel": pixel_loss(y.float(), target)}
        else:
            with torch.no_grad():
                t = self.vgg(target, (CONTENT_LAYER,))[CONTENT_LAYER]
            terms = {"feat": self.cfg.content_weight * feature_loss(self.vgg(y, (CONTENT_LAYER,))[CONTENT_LAYER], t)}
            if self.cfg.pixel_weight:
                terms["pixel"] = self.cfg.pixel_weight * pixel_loss(y.float(), target)
        if self.cfg.lattice_weight:
            terms["lattice"] = self.cfg.lattice_weight * lattice_loss(y, target, self.cfg.factor)
        if self.cfg.tv_weight:
            terms["tv"] = self.cfg.tv_weight * tv_loss(y.float())
        terms["total"] = sum(terms.values())  # type: ignore[assignment]
        return terms


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                   grad_clip: float = 0.0) -> None:
    """Backward and Adam step, through the fp16 gradient scaler when there is one; `grad_clip` > 0 caps the
    global gradient norm (the normalization-free SR nets can diverge without it)."""
    opt.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler else loss).backward()
    if grad_clip > 0:
        if scaler:
            scaler.unscale_(opt)
        params = [p for group in opt.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()


def _save_checkpoint(path: Path, net: TransformNet, opt: torch.optim.Optimizer, iteration: int,
                     cfg: TrainConfig, scaler: torch.amp.GradScaler | None, extra: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict() if scaler else None,
        "iteration": iteration,
        "config": json.dumps(cfg.to_dict()),
        "network": json.dumps(net.config.to_dict()),
        "extra": json.dumps(extra),
    }, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken checkpoint behind


def best_checkpoint(path: str | Path) -> Path:
    """The checkpoint to publish for `path`: a run's best.pt when `path` is its last.pt (or the run folder) and a
    best one exists, else `path` itself."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / LAST_FILE
    best = path.with_name(BEST_FILE)
    return best if path.name == LAST_FILE and best.is_file() else path


def _preview_images(cfg: TrainConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Up to four fixed images (inputs, references) shown at every preview, all the same size."""
    folder = settings().preview_dir
    if not folder.is_dir():
        return None
    files = data.find_images(folder)[:4]
    size = cfg.image_size if cfg.task == "style" else 288
    refs = torch.stack([data.CropDataset(files, size, resize=True)[i] for i in range(len(files))]).to(device)
    if cfg.task == "style":
        return refs, refs
    size -= size % cfg.factor
    refs = refs[..., :size, :size]
    return data.degrade(refs, cfg.factor), refs


def _save_preview(path: Path, net: TransformNet, previews: tuple[torch.Tensor, torch.Tensor], factor: int) -> None:
    inputs, refs = previews
    was_training = net.training
    net.eval()
    with torch.no_grad():
        out = net(inputs).clamp(0, 255)
    net.train(was_training)
    shown = inputs if factor == 1 else data.upsample_bicubic(inputs, factor)
    rows = torch.cat([torch.cat(list(shown), 2), torch.cat(list(out), 2)], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(rows).save(path)


def plot_losses(log_path: Path, out: Path) -> None:
    """PNG of every loss term (train and validation) against the iteration, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[int], list[float]]] = {}
    for line in log_path.read_text().splitlines():
        rec = json.loads(line)
        for k, v in rec.items():
            if k not in ("iteration", "time", "it_per_s", "lr") and isinstance(v, (int, float)) and v > 0:
                xs, ys = series.setdefault(k, ([], []))
                xs.append(rec["iteration"])
                ys.append(v)
    fig, ax = plt.subplots(figsize=(8, 5))
    for k, (xs, ys) in sorted(series.items()):
        ax.plot(xs, ys, label=k, marker="o" if k.startswith("val_") else None, markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("weighted loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _validate(net: TransformNet, losses: Losses, val: list[torch.Tensor], device: torch.device) -> dict[str, float]:
    net.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for batch in val:
            x, t = losses.inputs_and_targets(batch.to(device))
            for k, v in losses(net(x), t).items():
                sums[k] = sums.get(k, 0.0) + v.item() / len(val)
    net.train()
    return {f"val_{k}": v for k, v in sums.items()}


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world size) from torchrun's environment; (0, 0, 1) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 0, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world


def resume_config(checkpoint: str | Path, **overrides: Any) -> TrainConfig:
    """The configuration a checkpoint was trained with; only its length and output options may change, so
    that the resumed run is the run that was interrupted."""
    # data/style_image: the same files, moved (configs store absolute paths; a run resumed elsewhere may need new ones)
    allowed = {"iterations", "publish", "run_dir", "device", "workers", "checkpoint_every", "preview_every", "data",
               "style_image"}
    if set(overrides) - allowed:
        raise ValueError(f"a resumed run keeps its configuration; only {sorted(allowed)} can change")
    cfg = TrainConfig.from_dict(load_checkpoint(checkpoint)["config"])
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg


RUN_FILES = ("config.json", "log.jsonl", "losses.png", "checkpoints", "previews")  # what a run writes


class RunExistsError(ValueError):
    """A new run asked for a folder that holds another run (its log would be appended to, its last.pt replaced)."""


def run_dir_for(cfg: TrainConfig) -> Path:
    """The run's folder, absolute: --run-dir, else PERCEPT_RUNS (default ./runs of the current folder) / NAME."""
    return Path(cfg.run_dir or settings().runs_dir / cfg.name).expanduser().absolute()


def run_exists(run_dir: Path) -> bool:
    return any((run_dir / f).exists() for f in RUN_FILES)


def clear_run(run_dir: Path) -> None:
    """Remove what a run wrote there (--overwrite); anything else in the folder is left alone."""
    for f in RUN_FILES:
        path = run_dir / f
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def train(
    cfg: TrainConfig, resume: str | Path | None = None, on_log: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run a training run, or continue one from the checkpoint `resume` (use `resume_config` for its config).
    Returns a summary: run dir, last losses, checkpoint, published model. `on_log` receives every log record."""
    ckpt = load_checkpoint(resume) if resume else None
    start_iteration = ckpt["iteration"] if ckpt else 0

    rank, local_rank, world = _distributed()
    device = resolve_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_process = rank == 0
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    run_dir = run_dir_for(cfg)
    cfg.run_dir = str(run_dir)
    if main_process and not ckpt and run_exists(run_dir):
        raise RunExistsError(f"{run_dir} holds another run: choose another --name or --run-dir, continue it with "
                             f"--resume {run_dir / 'checkpoints' / LAST_FILE}, or pass --overwrite")

    vgg = load_loss_network(cfg.vgg_weights, random_weights=cfg.random_vgg).to(device)
    losses = Losses(cfg, vgg, device)
    net = build_network(cfg.network_config()).to(device)
    if cfg.init_from and not ckpt:
        state, cfg.init_from = initial_weights(cfg.init_from, net.config)  # NAME -> NAME@V: the parent's version
        net.load_state_dict(state)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    amp_dtype = _amp_dtype(device) if cfg.amp else None
    if cfg.amp and amp_dtype is None:
        log.warning("--amp ignored on %s: this CPU has no native bf16 (emulated bf16 is far slower than fp32)", device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    if ckpt:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if scaler and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        vgg = vgg.to(memory_format=torch.channels_last)
    model: torch.nn.Module = net
    if world > 1:
        model = DistributedDataParallel(net, device_ids=[local_rank] if device.type == "cuda" else None)

    patch = cfg.image_size if cfg.task == "style" else (288 if cfg.image_size == 256 else cfg.image_size)
    patch -= patch % max(cfg.factor if cfg.task == "sr" else 4, 1)
    files = data.find_images(cfg.data, min_side=patch if cfg.task == "sr" else 64)
    train_files, val_files = data.split(files, cfg.val_images)
    dataset = data.CropDataset(train_files, patch, resize=cfg.task == "style")
    sampler = data.SampleOrder(len(train_files), cfg.seed, start_iteration * cfg.batch_size * world, rank, world)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0)
    val_set = data.CropDataset(val_files, patch, resize=cfg.task == "style")
    val_batches = [torch.stack([val_set[i] for i in range(j, min(j + cfg.batch_size, len(val_set)))])
                   for j in range(0, len(val_set), cfg.batch_size)]
    previews = _preview_images(cfg, device) if main_process else None
    if main_process:  # only once everything has loaded: a failed start leaves no config.json behind
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    log_path = run_dir / "log.jsonl"
    ckpt_path = run_dir / "checkpoints" / LAST_FILE
    best: dict[str, Any] = dict(ckpt["extra"].get("best") or {}) if ckpt else {}  # iteration, val_total
    stop = {"requested": False}
    old_handler = signal.getsignal(signal.SIGINT)
    if main_process:
        def _on_sigint(signum: int, frame: Any) -> None:
            if stop["requested"]:  # a second Ctrl-C aborts at once
                signal.signal(signal.SIGINT, old_handler)
                raise KeyboardInterrupt
            stop["requested"] = True
            tqdm.write("Ctrl-C: finishing this iteration and saving a checkpoint (Ctrl-C again to abort)")
        signal.signal(signal.SIGINT, _on_sigint)

    iteration = start_iteration
    last: dict[str, float] = {}
    fp32_fallback = False
    bad_steps = 0
    started = time.perf_counter()
    earlier_wall = ckpt["extra"].get("wall_seconds", 0.0) if ckpt else 0.0
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"

    def facts() -> dict[str, Any]:
        wall = earlier_wall + time.perf_counter() - started
        return {"losses": last, "wall_seconds": round(wall, 1), "hardware": hardware, "best": best}

    bar = tqdm(total=cfg.iterations, initial=start_iteration, desc=f"{cfg.task} {cfg.name}", unit="it",
               disable=not main_process, dynamic_ncols=True)
    model.train()
    try:
        batches = iter(loader)
        while iteration < cfg.iterations and not stop["requested"]:
            try:
                batch = next(batches).to(device, non_blocking=True)
            except Exception:
                if stop["requested"]:  # Ctrl-C in a terminal also stops the loader's workers
                    break
                raise
            x, target = losses.inputs_and_targets(batch)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            use_amp = amp_dtype is not None and not fp32_fallback
            ctx = torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext()
            with ctx:
                y = model(x)
                terms = losses(y.float(), target)
            total = terms["total"]
            finite = bool(torch.isfinite(total))
            if world > 1:
                # Every rank must take the same branch (skip the step, stop) or the gradient all-reduce hangs.
                flags = torch.tensor([float(not finite), float(stop["requested"])], device=device)
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                finite, stop["requested"] = not flags[0].item(), bool(flags[1].item())
            if not finite:
                # Mixed precision overflowed (or the run diverged): skip the step; after a few in a row, drop to fp32.
                bad_steps += 1
                opt.zero_grad(set_to_none=True)
                if use_amp and bad_steps >= 3:
                    fp32_fallback = True
                    tqdm.write("non-finite loss under autocast three times in a row: continuing in fp32")
                elif not use_amp and bad_steps >= 10:
                    raise FloatingPointError(f"loss is {total.item()} for 10 iterations in a row at {iteration}")
                continue
            bad_steps = 0
            optimizer_step(total, opt, scaler if use_amp else None, cfg.grad_clip)
            iteration += 1
            bar.update(1)
            if not main_process:
                continue
            last = {k: v.item() for k, v in terms.items()}
            if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                bar.set_postfix({k: f"{v:.3g}" for k, v in last.items()})
                rate = bar.format_dict.get("rate") or 0.0
                rec = {"iteration": iteration, "time": round(time.perf_counter() - started, 3),
                       "it_per_s": round(rate, 3), **last}
                if cfg.val_every and val_batches and (iteration % cfg.val_every == 0 or iteration == cfg.iterations):
                    rec.update(_validate(net, losses, val_batches, device))
                    if not best or rec["val_total"] < best["val_total"]:
                        best = {"iteration": iteration, "val_total": rec["val_total"]}
                        _save_checkpoint(ckpt_path.with_name(BEST_FILE), net, opt, iteration, cfg, scaler, facts())
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                if on_log:
                    on_log({**rec, "total_iterations": cfg.iterations})
            if previews is not None and cfg.preview_every and iteration % cfg.preview_every == 0:
                _save_preview(run_dir / "previews" / f"iter_{iteration:06d}.png", net, previews, net.config.factor)
            if cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0:
                _save_checkpoint(ckpt_path, net, opt, iteration, cfg, scaler, facts())
                if log_path.exists():  # nothing logged yet when checkpoint_every < log_every
                    plot_losses(log_path, run_dir / "losses.png")
    finally:
        bar.close()
        if main_process:
            signal.signal(signal.SIGINT, old_handler)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "iteration": iteration, "losses": last}
    if main_process:
        _save_checkpoint(ckpt_path, net, opt, iteration, cfg, scaler, facts())
        if log_path.exists():
            plot_losses(log_path, run_dir / "losses.png")
        if previews is not None:
            _save_preview(run_dir / "previews" / "final.png", net, previews, net.config.factor)
        summary["checkpoint"] = str(ckpt_path)
        summary["interrupted"] = stop["requested"]
        summary["best"] = best
        if cfg.publish and not stop["requested"]:
            summary["published"] = publish_checkpoint(best_checkpoint(ckpt_path), cfg.name)
    if world > 1:
        dist.destroy_process_group()
    return summary


def recipe_of(training: dict[str, Any]) -> StyleRecipe:
    """The objective a style model was trained with, from its manifest's training facts (the paper's recipe for
    models published before recipes existed)."""
    facts = {k: v for k, v in training.items() if k in {f.name for f in fields(TrainConfig)}}
    return TrainConfig.from_dict({**facts, "task": "style", "name": "manifest"}).style_recipe()


def initial_weights(source: str, config: NetworkConfig) -> tuple[dict[str, torch.Tensor], str]:
    """fp32 weights to start a run from, and where they came from: a store model (NAME or NAME@VERSION, returned
    as NAME@VERSION, so that the manifest names the parent's version) or a training checkpoint (.pt). Its network
    must be the one being trained (same kind, preset, width...)."""
    if source.endswith(".pt"):
        ckpt = load_checkpoint(source)
        found, state = NetworkConfig.from_dict(ckpt["network"]), ckpt["model"]
    else:  # store.load checks the weights' sha256 and returns them in fp32
        name, _, version = source.partition("@")
        stored, entry = store.load(name, int(version) if version else None)
        found, state, source = entry.config, stored.state_dict(), f"{name}@{entry.version}"
    if found != config:
        raise ValueError(f"--init-from {source} is a {found} network, but this run trains a {config}")
    return {k: v.float() for k, v in state.items()}, source


def training_facts(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a manifest records about how a model was trained."""
    cfg = TrainConfig.from_dict(ckpt["config"]).to_dict()  # resolved: old runs name their (paper) recipe too
    task_keys = (("style_size", "recipe", "content_weight", "style_weight", "content_layer", "layer_weights",
                  "normalization", "init_from") if cfg["task"] == "style"
                 else ("loss", "factor", "content_weight", "pixel_weight", "lattice_weight", "init_from"))
    keys = ("task", "batch_size", "image_size", "tv_weight", "lr", "grad_clip", "seed", "amp", *task_keys)
    facts = {k: cfg.get(k) for k in keys}
    facts["iterations"] = ckpt["iteration"]
    if ckpt["extra"].get("best"):
        facts["best_validation"] = ckpt["extra"]["best"]
    if cfg["task"] == "style":
        facts["style_image"] = Path(cfg["style_image"]).name
    facts["data"] = cfg["data"]
    facts["final_losses"] = ckpt["extra"].get("losses", {})
    facts["wall_seconds"] = ckpt["extra"].get("wall_seconds")
    facts["hardware"] = ckpt["extra"].get("hardware")
    return facts


def publish_checkpoint(path: str | Path, name: str, half: bool = True) -> dict[str, Any]:
    """Publish a checkpoint's network to the model store; a style model keeps its style image as trained."""
    net, ckpt = network_from_checkpoint(path)
    extra: dict[str, bytes] = {}
    cfg = TrainConfig.from_dict(ckpt["config"])
    if cfg.task == "style" and cfg.style_image and Path(cfg.style_image).is_file():
        buf = io.BytesIO()
        to_pil(load_style_image(cfg, torch.device("cpu"))).save(buf, "PNG")
        extra[store.STYLE_FILE] = buf.getvalue()
    entry = store.publish(name, net, training_facts(ckpt), half=half, extra_files=extra)
    return {"name": entry.name, "version": entry.version, "path": str(entry.path)}
