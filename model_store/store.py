"""The versioned model store: what the trainer publishes and the worker loads.

Layout of a store root::

    <root>/<name>/<version>/model.safetensors   weights (fp32 or fp16)
    <root>/<name>/<version>/manifest.json       name, kind, factor, network config, sha256, created_at, training
    <root>/<name>/<version>/style.png           style models: the style image as trained (objective, thumbnail)
    <root>/<name>/DEFAULT                       optional pinned default version (else the highest)

Publishing writes a version into a temporary directory, fsyncs it and renames it into place, so a reader never
sees half a model. Loading verifies the weights' sha256 against the manifest.

Roots are searched in order: the ``MODEL_STORE`` directory when that variable is set, the user's store
(``PERCEPT_USER_STORE``, default ``$XDG_DATA_HOME/percept/models``, i.e. ``~/.local/share/percept/models``), then
the built-in store shipped inside this package (so a fresh clone serves the built-in models with no
configuration). A model name found in an earlier root hides the same name in a later one. Publishing goes to
``MODEL_STORE`` when set, else to the user's store: never into the package (a source checkout or site-packages).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:  # torch loads only where weights are read or written: the API lists models without it
    import torch

    from model_store.networks import NetworkConfig, TransformNet

BUILTIN_ROOT = Path(__file__).resolve().parent / "builtin"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
DEFAULT_FILE = "DEFAULT"
STYLE_FILE = "style.png"  # a style model's style image, at the size it was trained with
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")  # \Z: "$" would accept a trailing newline


class ModelStoreError(Exception):
    """Base class for store errors; the message is meant for the user."""


class ModelNotFound(ModelStoreError, LookupError):
    pass


class IntegrityError(ModelStoreError):
    pass


def validate_name(name: str) -> str:
    """Model names are lowercase letters, digits, '_' and '-', at most 64 characters: no dots, no paths."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ModelStoreError(
            f"invalid model name {name!r}: use 1-64 lowercase letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path
    manifest: dict[str, Any]

    @property
    def config(self) -> NetworkConfig:
        from model_store.networks import NetworkConfig

        return NetworkConfig.from_dict(self.manifest["network"])

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE


def user_root() -> Path:
    """The per-user store: PERCEPT_USER_STORE, else $XDG_DATA_HOME/percept/models (XDG's default for
    XDG_DATA_HOME is ~/.local/share). Read from the environment on each call, like MODEL_STORE."""
    explicit = os.environ.get("PERCEPT_USER_STORE")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(data_home).expanduser() / "percept" / "models"


def roots() -> list[Path]:
    """Store roots in lookup order: MODEL_STORE (when set), the user's store, the built-in store."""
    extra = os.environ.get("MODEL_STORE")
    return ([Path(extra)] if extra else []) + [user_root(), BUILTIN_ROOT]


def publish_root() -> Path:
    """Where `publish` writes: MODEL_STORE when set, else the user's store (created on first publish)."""
    extra = os.environ.get("MODEL_STORE")
    return Path(extra) if extra else user_root()


def _versions_in(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / MANIFEST_FILE).is_file())


def _model_dir(name: str) -> Path | None:
    validate_name(name)
    for root in roots():
        if _versions_in(root / name):
            return root / name
    return None


def list_models() -> list[str]:
    names: set[str] = set()
    for root in roots():
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if NAME_RE.match(p.name) and _versions_in(p))
    return sorted(names)


def versions(name: str) -> list[int]:
    model_dir = _model_dir(name)
    return _versions_in(model_dir) if model_dir else []


def default_version(name: str) -> int:
    model_dir = _model_dir(name)
    if model_dir is None:
        raise ModelNotFound(f"no model named {name!r} (known: {', '.join(list_models()) or 'none'})")
    pinned = model_dir / DEFAULT_FILE
    available = _versions_in(model_dir)
    if pinned.is_file():
        version = int(pinned.read_text().strip())
        if version in available:
            return version
    return available[-1]


def get(name: str, version: int | None = None) -> ModelVersion:
    """The manifest of a model version (the default version when None)."""
    version = default_version(name) if version is None else version
    model_dir = _model_dir(name)
    if model_dir is None:
        raise ModelNotFound(f"no model named {name!r} (known: {', '.join(list_models()) or 'none'})")
    path = model_dir / str(version)
    if not (path / MANIFEST_FILE).is_file():
        raise ModelNotFound(f"model {name!r} has no version {version} (versions: {_versions_in(model_dir)})")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    return ModelVersion(name, version, path, manifest)


def load(
    name: str, version: int | None = None, device: str | torch.device = "cpu"
) -> tuple[TransformNet, ModelVersion]:
    """Load a model in eval mode on `device` after checking its weights' sha256."""
    from safetensors.torch import load_file

    from model_store.networks import build_network

    entry = get(name, version)
    actual = sha256_file(entry.weights_path)
    if actual != entry.manifest["sha256"]:
        raise IntegrityError(
            f"weights of {name} v{entry.version} do not match the manifest's sha256 "
            f"({actual[:12]}… != {entry.manifest['sha256'][:12]}…): refusing to load {entry.weights_path}"
        )
    net = build_network(entry.config)
    state = {k: v.float() for k, v in load_file(entry.weights_path).items()}
    net.load_state_dict(state, strict=True)
    return net.eval().to(device), entry


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(
    name: str,
    net: TransformNet,
    training: dict[str, Any] | None = None,
    *,
    half: bool = True,
    root: Path | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> ModelVersion:
    """Publish `net` as the next version of `name`. Atomic: the version appears whole or not at all."""
    import torch
    from safetensors.torch import save_file

    validate_name(name)
    root = Path(root) if root else publish_root()
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=model_dir))
    try:
        dtype = torch.float16 if half else torch.float32
        state = {
            k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in net.state_dict().items()
        }
        save_file(state, tmp / WEIGHTS_FILE)
        for fname, data in (extra_files or {}).items():
            (tmp / fname).write_bytes(data)
        manifest = {
            "name": name,
            "kind": net.config.kind,
            "factor": net.config.factor,
            "network": net.config.to_dict(),
            "dtype": str(dtype).removeprefix("torch."),
            "sha256": sha256_file(tmp / WEIGHTS_FILE),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "training": training or {},
        }
        # Take the next free number; the rename fails if a concurrent publisher took it first, so retry.
        while True:
            # Count every numbered entry, manifest or not: renaming onto a non-empty leftover would fail forever.
            version = max((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), default=0) + 1
            manifest["version"] = version
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            try:
                os.rename(tmp, model_dir / str(version))
                break
            except OSError:
                if not (model_dir / str(version)).exists():
                    raise
        _fsync_dir(model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ModelVersion(name, version, model_dir / str(version), manifest)


SrLoss = Literal["feat", "pixel"]  # the losses an SR model of `upscale` is trained with
SR_LOSSES: tuple[str, ...] = get_args(SrLoss)


def sr_model_name(factor: int, loss: str = "feat") -> str:
    """The model that serves `upscale` at this factor and loss: `sr_x4` is the feature-loss network (the paper's
    figures, and the default), `sr_x4_pixel` the pixel-loss baseline."""
    if loss not in SR_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(SR_LOSSES)}, got {loss!r}")
    return f"sr_x{factor}" if loss == "feat" else f"sr_x{factor}_{loss}"


def sr_loss(name: str, factor: int) -> str | None:
    """The `loss` under which `upscale` serves the SR model `name`, or None when no (factor, loss) maps to it."""
    return next((loss for loss in SR_LOSSES if name == sr_model_name(factor, loss)), None)


def sr_detail_pair(factor: int) -> tuple[str, str]:
    """(pixel-loss model, feature-loss model) that the detail dial interpolates at this factor. Network
    interpolation only makes sense when the feature-loss network was fine-tuned from the pixel-loss one (ESRGAN's
    finding; two independently trained nets average to noise), so the feat model's manifest must name the pixel
    model as its `init_from`. Raises ModelStoreError with a one-line reason otherwise."""
    pixel, feat = sr_model_name(factor, "pixel"), sr_model_name(factor, "feat")
    for name in (pixel, feat):
        if name not in list_models():
            raise ModelNotFound(f"detail needs both {pixel} and {feat}; there is no {name}")
    parent = str(get(feat).manifest.get("training", {}).get("init_from") or "")
    if parent.partition("@")[0] != pixel:
        raise ModelStoreError(f"detail needs {feat} fine-tuned from {pixel}; {feat} v{default_version(feat)} "
                              f"was trained {'from ' + parent if parent else 'from scratch'}")
    return pixel, feat


def _writable_dir(name: str) -> Path:
    model_dir = _model_dir(name)
    if model_dir is None:
        raise ModelNotFound(f"no model named {name!r}")
    return model_dir


def set_default(name: str, version: int | None) -> None:
    """Pin the default version of `name` (None: back to the highest). Atomic (write then rename)."""
    model_dir = _writable_dir(name)
    pinned = model_dir / DEFAULT_FILE
    if version is None:
        pinned.unlink(missing_ok=True)
        return
    if version not in _versions_in(model_dir):
        raise ModelNotFound(f"model {name!r} has no version {version} (versions: {_versions_in(model_dir)})")
    tmp = model_dir / f".{DEFAULT_FILE}.tmp"
    tmp.write_text(f"{version}\n")
    os.replace(tmp, pinned)


def delete_version(name: str, version: int) -> None:
    """Remove one version. It is first renamed out of sight, so a reader never sees it half deleted."""
    model_dir = _writable_dir(name)
    path = model_dir / str(version)
    if not (path / MANIFEST_FILE).is_file():
        raise ModelNotFound(f"model {name!r} has no version {version} (versions: {_versions_in(model_dir)})")
    trash = Path(tempfile.mkdtemp(prefix=f".deleted-{version}-", dir=model_dir))
    os.rename(path, trash / "v")
    shutil.rmtree(trash, ignore_errors=True)
    pinned = model_dir / DEFAULT_FILE
    if pinned.is_file() and pinned.read_text().strip() == str(version):
        pinned.unlink()
