"""The model catalog as the API shows it: model info, style and factor lookups, style thumbnails."""

from __future__ import annotations

import io
import logging
from typing import Any

from fastapi import HTTPException

from model_store import store
from service.deps import ServiceState
from service.schemas import ModelInfo
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

# Models


TRAINING_SUMMARY = ("task", "iterations", "image_size", "batch_size", "style_image", "style_size", "loss", "recipe",
                    "content_weight", "style_weight", "tv_weight", "content_layer", "normalization", "init_from",
                    "final_losses", "best_validation", "wall_seconds", "hardware", "command")


def serving_versions(queue: Any, settings: ServiceSettings) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    try:
        for w in queue.workers(settings.worker_stale_s):
            for name, version in (w.get("models") or {}).items():
                out.setdefault(name, set()).add(int(version))
    except Exception as e:  # noqa: BLE001 - model listings work without the queue
        log.warning("cannot read worker heartbeats: %s", e)
    return out


def model_info(name: str, serving: dict[str, set[int]] | None = None, card: bool = False) -> ModelInfo:
    """`card`: include the manifest's model card (GET /models/{name}; the listing stays short)."""
    entry = store.get(name)
    m = entry.manifest
    has_thumbnail = m["kind"] == "style" and (entry.path / store.STYLE_FILE).is_file()
    training = m.get("training") or {}
    return ModelInfo(
        name=name, kind=m["kind"], factor=int(m["factor"]), version=entry.version, versions=store.versions(name),
        serving_versions=sorted((serving or {}).get(name, set())), created_at=m.get("created_at"),
        training={k: training[k] for k in TRAINING_SUMMARY if k in training},
        loss=store.sr_loss(name, int(m["factor"])) if m["kind"] == "sr" else None,
        detail=m["kind"] == "sr" and _has_detail(name, int(m["factor"])),
        thumbnail_url=f"/styles/{name}/thumbnail" if has_thumbnail else None,
        card=m.get("card") if card else None,
    )


def _has_detail(name: str, factor: int) -> bool:
    """Whether `name` is the sharp end of the factor's detail dial. Only the factor's feature-loss model can be:
    the others are answered without reading the store (GET /models lists every model)."""
    if name != store.sr_model_name(factor, "feat"):
        return False
    try:
        return store.sr_detail_pair(factor)[1] == name
    except store.ModelStoreError:
        return False


def sample_path(name: str) -> Any:
    """The default version's sample image (a small JPEG next to its manifest), or a 404."""
    try:
        entry = store.get(name)
    except store.ModelStoreError as e:
        raise model_error(e) from None
    sample = (entry.manifest.get("card") or {}).get("sample") or {}
    path = entry.path / str(sample.get("file", ""))
    if not sample.get("file") or "/" in sample["file"] or not path.is_file():
        raise HTTPException(404, f"model {name!r} v{entry.version} has no sample image")
    return path


def all_models(serving: dict[str, set[int]]) -> list[ModelInfo]:
    out = []
    for name in store.list_models():
        try:
            out.append(model_info(name, serving))
        except (store.ModelStoreError, OSError, ValueError, KeyError) as e:
            log.warning("skipping model %s: %s", name, e)
    return out


def style_names() -> list[str]:
    names = []
    for name in store.list_models():
        try:
            if store.get(name).manifest["kind"] == "style":
                names.append(name)
        except (store.ModelStoreError, OSError, ValueError, KeyError):
            continue
    return names


def check_style(name: str) -> None:
    try:
        kind = store.get(name).manifest["kind"]
    except store.ModelStoreError:
        kind = None
    if kind != "style":
        known = ", ".join(style_names()) or "none"
        raise HTTPException(404, f"unknown style {name!r}; known styles: {known}")


def sr_models() -> list[tuple[int, str]]:
    """(factor, loss) of every SR model that `upscale` serves, by factor, then feat before pixel."""
    out = []
    for name in store.list_models():
        try:
            m = store.get(name).manifest
        except (store.ModelStoreError, OSError, ValueError, KeyError):
            continue
        if m["kind"] == "sr" and (loss := store.sr_loss(name, int(m["factor"]))):
            out.append((int(m["factor"]), loss))
    return sorted(out, key=lambda fl: (fl[0], store.SR_LOSSES.index(fl[1])))


def check_sr(factor: int, loss: str = "feat") -> str:
    name = store.sr_model_name(factor, loss)
    try:
        m = store.get(name).manifest
        if m["kind"] == "sr" and int(m["factor"]) == factor:
            return name
    except store.ModelStoreError:
        pass
    by_loss: dict[str, list[str]] = {}
    for f, fl in sr_models():
        by_loss.setdefault(fl, []).append(str(f))
    available = "; ".join(f"{', '.join(fs)} (loss={fl})" for fl, fs in by_loss.items()) or "none"
    raise HTTPException(404, f"no super-resolution model for factor {factor} with loss={loss}; "
                             f"available factors: {available}")


def thumbnail(state: ServiceState, name: str, size: int) -> bytes:
    """A JPEG of the style image, longer side `size`, cached per (name, version, size)."""
    try:
        entry = store.get(name)
    except store.ModelStoreError:
        entry = None
    path = entry.path / store.STYLE_FILE if entry else None
    if entry is None or entry.manifest["kind"] != "style" or not path.is_file():
        raise HTTPException(404, f"no style image for {name!r}")
    key = (name, entry.version, size)
    with state.thumbnail_lock:
        if key in state.thumbnails:
            state.thumbnails.move_to_end(key)
            return state.thumbnails[key]
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85, optimize=True)
    data = buf.getvalue()
    with state.thumbnail_lock:
        state.thumbnails[key] = data
        while len(state.thumbnails) > 256:
            state.thumbnails.popitem(last=False)
    return data


def model_error(e: store.ModelStoreError) -> HTTPException:
    return HTTPException(404 if isinstance(e, store.ModelNotFound) else 400, str(e))
