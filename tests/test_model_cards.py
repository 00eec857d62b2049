"""Model cards (issue 16): every built-in manifest carries a card (description, the style image's title, artist
and licence, evaluation numbers from docs/RESULTS.md, a small sample image); `percept models show` prints it and
GET /models/{name} returns it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from model_store import store
from percept.cli import app
from service.app import create_app
from service.settings import ServiceSettings
from worker.memory_queue import MemoryQueue

BUILTIN = sorted(p.parent for p in store.BUILTIN_ROOT.glob("*/*/manifest.json"))


@pytest.mark.parametrize("version_dir", BUILTIN, ids=lambda p: f"{p.parent.name}@{p.name}")
def test_every_builtin_version_has_a_card(version_dir: Path) -> None:
    m = json.loads((version_dir / "manifest.json").read_text())
    card = m["card"]
    assert len(card["description"]) > 40
    ev = card["evaluation"]
    assert ev["measured"].startswith("docs/RESULTS.md")
    if m["kind"] == "style":
        style = card["style"]
        assert style["file"] == m["training"]["style_image"]
        assert {"title", "artist", "year", "artwork_licence", "image_terms", "use", "source"} <= set(style)
        assert set(ev["gram_error"]) == {"relu1_2", "relu2_2", "relu3_3", "relu4_3"}
    else:
        assert 10 < ev["Set5"]["psnr"] < 40 and 0 < ev["Set14"]["ssim"] < 1
        assert ev["Set5"]["bicubic_psnr"] > 0  # the baseline to compare with
    sample = version_dir / card["sample"]["file"]
    assert sample.stat().st_size < 40_000  # small enough to ship in the package
    with Image.open(sample) as im:
        assert im.format == "JPEG" and max(im.size) == 256


def test_card_numbers_match_results_md() -> None:
    results = (Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md").read_text()
    for name, loss in (("sr_x4_pixel", "pixel"), ("sr_x4", "feat"), ("sr_x8", "feat")):
        entry = store.get(name)  # the default version: the one the report measured
        sr = entry.manifest["card"]["evaluation"]["Set14"]
        factor = entry.manifest["factor"]
        assert (f"| Set14 | x{factor} | {loss} | {name} v{entry.version} | {sr['psnr']:.2f} | {sr['ssim']:.4f} |"
                in results)
    muse = store.get("muse", 2).manifest["card"]["evaluation"]
    assert f"| muse v2 | balanced | {muse['gram_error']['relu1_2']:g} |" in results


def test_models_show_prints_the_card() -> None:
    result = CliRunner().invoke(app, ["models", "show", "muse"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith("muse v2  style")
    assert "Pablo Picasso, 'La Muse', 1935" in text and "still under copyright" in text
    assert "Gram error" in text and "objective" in text and "sample.jpg" in text

    result = CliRunner().invoke(app, ["models", "show", "sr_x4_pixel"], env={"COLUMNS": "200"})
    set5 = store.get("sr_x4_pixel").manifest["card"]["evaluation"]["Set5"]
    assert "super-resolution x4 (pixel loss)" in result.stdout
    assert f"Set5          PSNR {set5['psnr']:.2f} dB" in result.stdout

    result = CliRunner().invoke(app, ["models", "show", "muse", "--version", "1", "--json"])
    manifest = json.loads(result.stdout)
    assert manifest["version"] == 1 and manifest["card"]["style"]["title"] == "La Muse"


def test_a_model_without_a_card_still_shows(tmp_store: Path) -> None:
    from model_store.networks import NetworkConfig, build_network

    store.publish("plain", build_network(NetworkConfig(kind="sr", factor=4, width=0.25)))
    result = CliRunner().invoke(app, ["models", "show", "plain"])
    assert result.exit_code == 0 and "(no model card)" in result.stdout


def test_api_returns_the_card_and_the_sample() -> None:
    with TestClient(create_app(ServiceSettings(), queue=MemoryQueue(), start_worker=False)) as client:
        resp = client.get("/models/starry_night")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["name"] == "starry_night" and body["card"]["style"]["artist"] == "Vincent van Gogh"
        assert body["card"]["evaluation"]["objective"]["network_vs_gatys_100"].endswith("%")
        assert all(m["card"] is None for m in client.get("/models").json())  # the listing stays short

        resp = client.get("/models/starry_night/sample")
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(resp.content)) as im:
            assert max(im.size) == 256

        assert client.get("/models/no_such_model").status_code == 404
        assert client.get("/models/no_such_model/sample").status_code == 404
        assert client.get("/models/Bad.Name").status_code == 422
