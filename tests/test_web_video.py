"""The web page with a video (tests/test_web_page.py's server and headless Chromium): a clip is uploaded, runs as
a job, and its MP4 plays in a <video> element with a .mp4 download; an image after it gets the slider back."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_video import PTS, make_clip
from test_web_page import JOB_MS, Page, browser, page, photo, server  # noqa: F401 - fixtures

VIDEO_SHOWN = """() => {
  const v = document.getElementById('result-video');
  return !document.getElementById('output').hidden && !v.hidden && v.readyState >= 1 ? v.duration : 0;
}"""


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "walk.mp4", pts=PTS[:8])


def test_a_video_is_stylized_and_plays(page: Page, clip: Path, photo: Path) -> None:  # noqa: F811
    p = page.page
    p.set_input_files("#file", str(clip))
    assert p.locator("#file-meta").inner_text().startswith("Video")
    p.locator("label.card[data-value=muse]").click()
    p.get_by_role("button", name="Go").click()
    # Chromium plays H.264: its metadata loads, and the duration is the clip's 1 s audio track (kept) while the
    # 8 frames end at 0.3 s.
    duration = p.wait_for_function(VIDEO_SHOWN, timeout=JOB_MS).json_value()
    assert 0.9 < duration < 1.2
    assert p.locator("#result-video").evaluate("v => v.videoWidth") == 64
    assert p.locator("#compare").is_hidden()
    assert p.locator("#download").get_attribute("download") == "walk-muse.mp4"
    assert "MP4" in p.locator("#result-info").inner_text()
    page.screenshot("video_result")

    p.set_input_files("#file", str(photo))  # an image afterwards: the comparison is back, the video gone
    p.get_by_role("button", name="Go").click()
    p.wait_for_function("() => document.getElementById('result-image').naturalWidth > 0", timeout=JOB_MS)
    assert p.locator("#result-video").is_hidden() and p.locator("#compare").is_visible()
    page.assert_no_errors()
