"""`percept report` end to end on tiny inputs: the tables, the images, the stamp."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from percept.cli import app


def test_report_writes_tables_and_images(tmp_path: Path, shared_data: Path, vgg_weights: Path) -> None:
    sr = tmp_path / "Set5"
    sr.mkdir()
    for name in ("baby.png", "bird.png"):
        Image.open(shared_data / "sr" / "Set5" / name).convert("RGB").crop((0, 0, 48, 40)).save(sr / name)
    content = tmp_path / "content"
    content.mkdir()
    Image.open(shared_data / "content" / "chicago.jpg").convert("RGB").resize((40, 28)).save(content / "c.png")
    out = tmp_path / "docs"
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--sr-data", str(sr), "--content-dir",
                                      str(content), "--styles", "muse", "--gatys-iterations", "1,2",
                                      "--image-size", "32", "--limit", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    text = (out / "RESULTS.md").read_text()
    assert "| Set5 | x4 | bicubic |" in text and "| Set5 | x8 | feat | sr_x8 v" in text
    assert "| Set5 | x4 | pixel | sr_x4_pixel v" in text  # all three x4 methods are built in
    assert "- Set5 x4: l_pixel scores " in text and "against l_pixel, with sharpness" in text
    assert "| muse v" in text and "Gatys @2" in text
    assert "| muse v1 | paper | " in text and "Gram relu4_3" in text  # the per-layer errors of every version
    assert "`percept report" in text  # every figure says how it was made
    for img in ("sr_crops.png", "gallery.jpg"):
        assert Image.open(out / "img" / img).size[0] > 100


def _style_result(model: str, network: float, at_100: float) -> dict:
    return {"model": model, "network": network, "gatys": {50: at_100 * 1.2, 100: at_100}}


def test_style_findings_say_who_misses_the_optimizer_and_how_they_were_trained() -> None:
    from trainer.report import _style_findings

    manifests = [{"network": {"width": 0.5}, "training": {"iterations": n}} for n in (6970, 7000)]
    text = _style_findings([_style_result("muse", 139.0, 100.0), _style_result("wave", 90.0, 100.0)], manifests)[0]
    assert text.startswith("**1 of 2 networks do not reach") and "(muse by 39%)" in text and "wave" not in text
    assert "6,970-7,000 iterations at width multiplier 0.5" in text

    met = _style_findings([_style_result("wave", 100.0, 100.0)], manifests[:1])
    assert met[0].startswith("Every network reaches an objective at or below")
    assert _style_findings([{"model": "muse", "network": 1.0, "gatys": {1: 2.0}}], manifests[:1]) == []
