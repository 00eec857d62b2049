"""The web page at ``GET /`` in a real browser: headless Chromium (Playwright) against `percept serve` in embedded
mode. Stylize and upscale a small image, show an API error in plain words, and fit a phone-sized screen.

Needs the ``playwright`` Python package and a system Chromium at /usr/bin/chromium (``apt-get install chromium``;
``playwright install`` is not used); skipped when either is missing. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import free_port, start_serve, stop
from PIL import Image

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               # Containers: a small /dev/shm, and proxy variables that must not catch 127.0.0.1.
               "--disable-dev-shm-usage", "--no-proxy-server"]
W, H = 64, 48
STARTUP_S = 60.0  # importing torch and warming up the built-in models at 32x32 on a busy CPU
JOB_MS = 30_000  # one job on the tiny image, from Go to the result shown
UI_MS = 10_000  # anything else the page does

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
RESULT_SHOWN = """() => {
  const img = document.getElementById('result-image');
  return !document.getElementById('output').hidden && img.complete && img.naturalWidth > 0 ? img.naturalWidth : 0;
}"""


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with NO_PROXY.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`percept serve` (embedded worker, built-in models) on a free port, ready."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "PERCEPT_REDIS_URL", "MODEL_STORE", "PERCEPT_PUBLIC_API_KEY")}
    # Tiles of 1 MP (the floor): a 200x150 photo at x8 runs in tiles, slowly enough to watch and cancel.
    env.update(PERCEPT_WARMUP_SIZES="32", PERCEPT_HEARTBEAT_S="0.5", PERCEPT_MAX_BATCH_DELAY_MS="2",
               PERCEPT_TILE_PIXELS="1000000",
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    with open(log_path, "wb") as log:
        proc = start_serve(port, env=env, ready="/readyz", timeout=STARTUP_S, log=log)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(proc, 15)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, timeout=30_000)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A fresh page on `url` that records the console errors and uncaught exceptions of the page."""

    def __init__(self, browser: Any, url: str, **context: Any):
        self.context = browser.new_context(accept_downloads=True, **context)
        self.context.set_default_timeout(UI_MS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(f"{r.method} {r.url.split('/', 3)[-1]}"))
        # Every text the status line shows, in order.
        self.page.add_init_script("""window.__statuses = [];
          addEventListener('DOMContentLoaded', () => new MutationObserver(() => {
            const text = document.getElementById('status').textContent;
            if (text) window.__statuses.push(text);
          }).observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true}));""")
        self.page.goto(url, wait_until="load")
        # The style cards are built from GET /styles, each with its thumbnail.
        self.page.wait_for_function("() => document.querySelectorAll('#styles .card img[src^=\"blob:\"]').length >= 1")

    def screenshot(self, name: str, full_page: bool = True) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"web_{name}.png"), full_page=full_page)

    def assert_no_errors(self, allowed: tuple[str, ...] = ()) -> None:
        """No uncaught exception and no console error, except a browser's "Failed to load resource: ... status of
        NNN" line for a status in `allowed` (an error answer the test asked for)."""
        left = [e for e in self.errors if not any(f"status of {code}" in e for code in allowed)]
        assert not left, left

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Page]:
    p = Page(browser, server + "/", viewport={"width": 1280, "height": 900})
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x48 PNG: a smooth colour field with some texture."""
    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((W, H), Image.Resampling.BICUBIC)
    pixels = np.asarray(base).astype(np.float32) + rng.normal(0, 10, (H, W, 3))
    path = tmp_path_factory.mktemp("images") / "street.png"
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
    return path


def run_job(p: Page) -> int:
    p.page.get_by_role("button", name="Go").click()
    width = p.page.wait_for_function(RESULT_SHOWN, timeout=JOB_MS).json_value()
    p.page.wait_for_function("() => !document.getElementById('go').disabled")
    return int(width)


def test_the_page_is_served_and_left_out_of_the_schema(server: str) -> None:
    status, body = http(server + "/")
    assert status == 200 and b"<title>percept" in body
    status, schema = http(server + "/openapi.json")
    assert status == 200 and "/" not in json.loads(schema)["paths"]


def test_stylize_an_uploaded_image(page: Page, photo: Path) -> None:
    p = page.page
    page.screenshot("1_start")
    p.set_input_files("#file", str(photo))
    p.wait_for_function("() => document.getElementById('input-preview').naturalWidth === 64")
    assert "64 × 48 px" in p.locator("#file-meta").inner_text()
    p.locator("label.card[data-value=muse]").click()
    assert p.locator("#style-muse").is_checked()
    p.get_by_label("Preserve colours").check()

    assert run_job(page) == W
    assert p.evaluate("document.getElementById('result-image').naturalHeight") == H
    # Submitted with async=true, then polled until done, and the result fetched from the job.
    statuses = p.evaluate("window.__statuses")
    assert statuses[0] == "Uploading…" and statuses[-1].startswith("Done in"), statuses
    assert any(s.startswith(("Queued", "Running", "Fetching")) for s in statuses[1:-1]), statuses
    posts = [r for r in page.requests if r.startswith("POST ")]
    assert len(posts) == 1, posts
    assert all(q in posts[0] for q in ("style=muse", "async=true", "preserve_color=true")), posts
    assert any(r.startswith("GET jobs/") and r.endswith("/result") for r in page.requests), page.requests
    assert p.locator("#before-image").evaluate("i => i.naturalWidth") == W
    link = p.locator("#download")
    assert link.is_visible()
    assert link.get_attribute("href").startswith("blob:")
    assert link.get_attribute("download") == "street-muse-preserve-color.png"  # the options are in the name
    page.screenshot("2_stylized")

    # The slider reveals more of one image or the other; side by side shows both.
    p.locator("#compare-range").fill("20")
    assert p.locator("#compare").evaluate("c => c.style.getPropertyValue('--pos')") == "20%"
    p.get_by_role("button", name="Side by side").click()
    assert p.locator("#compare").evaluate("c => c.classList.contains('side')")
    page.screenshot("3_side_by_side")

    with p.expect_download(timeout=UI_MS) as download:
        link.click()
    assert download.value.suggested_filename == "street-muse-preserve-color.png"
    with Image.open(download.value.path()) as im:
        assert im.size == (W, H) and im.format == "PNG"
    page.assert_no_errors()


def test_upscale_by_four(page: Page, photo: Path) -> None:
    p = page.page
    p.set_input_files("#file", str(photo))
    p.get_by_text("Upscale", exact=True).click()
    # One card per SR model that /upscale serves: by factor, the feature-loss network first.
    cards = p.locator("#factors label.card")
    assert cards.evaluate_all("cs => cs.map(c => c.dataset.value)") == ["sr_x4", "sr_x4_pixel", "sr_x8", "sr_x8_pixel"]
    assert "Smooth" in p.locator("label.card[data-value=sr_x4_pixel]").inner_text()
    # What Detailed and Smooth mean is visible text, not only a tooltip (phones show no tooltips).
    help_text = p.locator("#loss-help")
    assert help_text.is_visible() and all(w in help_text.inner_text() for w in ("Detailed", "Smooth", "pixel loss"))
    p.locator("label.card[data-value=sr_x4]").click()
    assert p.locator("#factor-sr_x4").is_checked()
    assert "256 × 192 px" in p.locator("#output-size").inner_text()

    assert run_job(page) == 4 * W
    assert p.evaluate("document.getElementById('result-image').naturalHeight") == 4 * H
    # The input is shown at the output's size, enlarged with the browser's smooth (bicubic-like) scaling: a fair
    # baseline, not blocky nearest-neighbour pixels.
    before = p.locator("#before-image")
    assert before.evaluate("i => getComputedStyle(i).imageRendering") == "auto"
    box_before, box_after = before.bounding_box(), p.locator("#result-image").bounding_box()
    assert box_before and box_after and abs(box_before["width"] - box_after["width"]) < 1
    assert p.locator("#download").get_attribute("download") == "street-x4.png"
    page.screenshot("4_upscaled")

    # The pixel-loss card asks /upscale for loss=pixel.
    p.locator("label.card[data-value=sr_x4_pixel]").click()
    assert run_job(page) == 4 * W
    posts = [r for r in page.requests if r.startswith("POST ")]
    assert "loss" not in posts[0] and all(q in posts[1] for q in ("factor=4", "loss=pixel")), posts
    assert p.locator("#download").get_attribute("download") == "street-x4-pixel.png"
    page.assert_no_errors()


def test_an_invalid_file_shows_the_api_error(page: Page, server: str, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("these are notes, not an image\n")
    status, body = http(server + "/stylize?style=muse", bad.read_bytes(), {"Content-Type": "image/png"})
    assert status == 400
    detail = json.loads(body)["detail"]

    p = page.page
    p.set_input_files("#file", str(bad))
    p.wait_for_function("() => document.getElementById('file-meta').textContent.length > 0")
    assert p.locator("#file-meta").inner_text().endswith("B")  # its size; no "cannot preview" warning first
    assert "preview" not in p.locator("#drop").inner_text().lower()
    p.get_by_role("button", name="Go").click()
    alert = p.get_by_role("alert")
    alert.wait_for(state="visible", timeout=JOB_MS)
    text = alert.inner_text()
    assert detail.lower() in text.lower(), (detail, text)
    assert "could not be read" in text
    assert p.locator("#output").is_hidden()
    p.wait_for_function("() => !document.getElementById('go').disabled")
    page.screenshot("5_invalid_file")
    page.assert_no_errors(allowed=("400",))  # the browser logs the refused upload's status


def test_a_phone_sized_screen(browser: Any, server: str, photo: Path) -> None:
    page = Page(browser, server + "/", viewport={"width": 390, "height": 844}, device_scale_factor=2,
                is_mobile=True, has_touch=True)
    try:
        p = page.page
        overflow = "() => document.documentElement.scrollWidth"
        assert p.evaluate(overflow) <= 390
        page.screenshot("6_phone_start")
        p.set_input_files("#file", str(photo))
        p.locator("label.card[data-value=muse]").click()
        assert run_job(page) == W
        assert p.evaluate(overflow) <= 390
        assert p.locator("#download").is_visible()
        # Everything sits within the screen's width.
        widest = p.evaluate("""() => Math.max(...Array.from(document.querySelectorAll('body *'))
            .filter(e => e.getClientRects().length).map(e => e.getBoundingClientRect().right))""")
        assert widest <= 390.5, widest
        page.screenshot("7_phone_result")
        page.assert_no_errors()
    finally:
        page.close()


def test_go_is_on_screen_at_1280x900(page: Page, photo: Path) -> None:
    """The whole form is taller than the window; Go stays visible (sticky) without scrolling."""
    p = page.page
    go = p.locator("#go")

    def go_on_screen() -> bool:
        box = go.bounding_box()
        return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 900

    assert p.evaluate("window.scrollY") == 0
    assert go_on_screen()
    p.set_input_files("#file", str(photo))
    p.get_by_text("Upscale", exact=True).click()
    assert go_on_screen() and p.evaluate("window.scrollY") == 0
    page.screenshot("8_desktop_go", full_page=False)


def test_max_side_below_the_minimum_is_refused_on_the_page(page: Page, photo: Path) -> None:
    p = page.page
    p.set_input_files("#file", str(photo))
    p.locator("#max-side").fill("8")
    p.get_by_role("button", name="Go").click()
    alert = p.get_by_role("alert")
    alert.wait_for(state="visible")
    assert "at least 16" in alert.inner_text()
    assert not [r for r in page.requests if r.startswith("POST ")]  # never sent
    p.locator("#max-side").fill("32")
    p.locator("label.card[data-value=muse]").click()
    assert run_job(page) == 32  # 64x48 shrunk to 32x24
    assert p.locator("#download").get_attribute("download") == "street-muse-max32.png"
    page.assert_no_errors()


def _slow_photo(path: Path) -> Path:
    """200x150: at x8 1600x1200 output pixels, two or more 1 MP tiles on the server of this module."""
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(path)
    return path


def test_progress_eta_and_cancel_of_a_long_job(page: Page, server: str, tmp_path: Path) -> None:
    p = page.page
    p.set_input_files("#file", str(_slow_photo(tmp_path / "big.png")))
    p.get_by_text("Upscale", exact=True).click()
    p.locator("label.card[data-value=sr_x8]").click()
    p.get_by_role("button", name="Go").click()
    cancel = p.get_by_role("button", name="Cancel")
    cancel.wait_for(state="visible", timeout=JOB_MS)
    # The bar turns from stripes into the fraction done once the worker reports a tile; the status gives an ETA.
    p.wait_for_function("() => +(document.getElementById('bar').getAttribute('aria-valuenow') || 0) > 0",
                        timeout=4 * JOB_MS)
    p.wait_for_function("() => /\\d+%.*left/.test(document.getElementById('status').textContent)", timeout=JOB_MS)
    page.screenshot("9_progress", full_page=False)
    job_id = next(r.split("/")[1] for r in page.requests if r.startswith("GET jobs/"))
    cancel.click()
    p.wait_for_function("() => document.getElementById('status').textContent === 'Cancelled'", timeout=JOB_MS)
    assert p.locator("#go").is_enabled() and cancel.is_hidden() and p.locator("#output").is_hidden()
    assert p.locator("#error").is_hidden()  # a cancel the user asked for is not an error
    assert any(r == f"DELETE jobs/{job_id}" for r in page.requests), page.requests
    status, body = http(f"{server}/jobs/{job_id}")
    assert status == 200 and json.loads(body)["status"] == "cancelled"
    assert "submitter" in json.loads(body)["error"]
    page.assert_no_errors()


def test_the_api_docs_render_offline(browser: Any, server: str) -> None:
    """/docs (Swagger UI) and /redoc with every request off this server refused: their scripts and styles are
    served by the service itself, so the operations render without a CDN."""
    context = browser.new_context()
    context.set_default_timeout(UI_MS)
    outside: list[str] = []

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_server)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/docs", wait_until="load")
        page.wait_for_selector(".opblock", timeout=JOB_MS)
        ops = page.locator(".opblock").evaluate_all(
            "bs => bs.map(b => b.querySelector('.opblock-summary-method').textContent + ' ' + "
            "b.querySelector('.opblock-summary-path').getAttribute('data-path'))")
        assert {"POST /stylize", "POST /upscale", "GET /jobs/{job_id}", "DELETE /jobs/{job_id}"} <= set(ops), ops
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_10_docs_offline.png"))
        assert not outside, outside  # nothing was even asked of a CDN
        # ReDoc too (its script is served here; only its "powered by" logo is asked of redoc.ly, and refused).
        page.goto(server + "/redoc", wait_until="load")
        page.wait_for_selector("text=/stylize", timeout=JOB_MS)
        assert all("cdn.redoc.ly" in u and u.endswith(".svg") for u in outside), outside
        assert not errors, errors
    finally:
        context.close()


def test_the_chosen_style_shows_its_model_card(page: Page) -> None:
    """The style's painting, artist and licence (the manifest's model card, GET /models/{name}) under the cards."""
    p = page.page
    p.locator("label.card[data-value=muse]").click()
    p.wait_for_function("() => document.getElementById('style-card').textContent.includes('Picasso')")
    assert "La Muse" in p.locator("#style-card").inner_text()
    p.locator("label.card[data-value=wave]").click()
    p.wait_for_function("() => document.getElementById('style-card').textContent.includes('Hokusai')")
    assert "Picasso" not in p.locator("#style-card").inner_text()


def test_a_card_with_unknown_fields_prints_no_null(page: Page) -> None:
    p = page.page
    p.locator("label.card[data-value=candy]").click()
    p.wait_for_function("() => document.getElementById('style-card').textContent.length > 0")
    assert "null" not in p.locator("#style-card").inner_text()


def test_larger_brush_strokes(page: Page, photo: Path) -> None:
    """The stroke dial: the request carries stroke=2, the result keeps the photo's size, the name says so."""
    p = page.page
    p.set_input_files("#file", str(photo))
    p.wait_for_function("() => document.getElementById('input-preview').naturalWidth === 64")
    p.locator("label.card[data-value=muse]").click()
    p.select_option("#stroke", "2")
    assert run_job(page) == W
    posts = [r for r in page.requests if r.startswith("POST ")]
    assert "stroke=2" in posts[-1], posts
    assert p.locator("#download").get_attribute("download") == "street-muse-stroke2.png"
    page.assert_no_errors()


def test_the_detail_slider_blends_the_two_x4_networks(page: Page, photo: Path, server: str) -> None:
    """Upscale: the Detail slider shows for a factor whose feature-loss model was fine-tuned from its pixel-loss
    one (GET /models says so), sends detail=0.5 and names the download; other factors hide it."""
    flags = {m["name"]: m["detail"] for m in json.loads(http(f"{server}/models")[1])}
    p = page.page
    p.set_input_files("#file", str(photo))
    p.get_by_text("Upscale", exact=True).click()
    for name in ("sr_x4", "sr_x4_pixel", "sr_x8", "sr_x8_pixel"):
        p.locator(f"label.card[data-value={name}]").click()
        assert p.locator("#detail-field").is_visible() == flags[name], name
    assert flags["sr_x4"], "the shipped sr_x4 is fine-tuned from sr_x4_pixel"
    p.locator("label.card[data-value=sr_x4]").click()
    p.locator("#detail").fill("0.5")
    assert p.locator("#detail-value").inner_text() == "50%"
    assert run_job(page) == 4 * W
    posts = [r for r in page.requests if r.startswith("POST ")]
    assert "detail=0.5" in posts[-1] and "loss" not in posts[-1], posts
    assert p.locator("#download").get_attribute("download") == "street-x4-detail50.png"
    page.assert_no_errors()
