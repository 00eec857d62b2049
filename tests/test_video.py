"""Video files through the image pipeline (model_store/video.py and the CLI hook), on tiny clips made here with
PyAV: 24 frames of 64x48 (or odd sizes) at variable frame rate with an AAC track."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from model_store import pipeline, video
from model_store.options import Options
from percept.cli import app

TB = Fraction(1, 1000)
# Variable frame rate: 33 ms steps with a 100 ms and a 67 ms gap, as a phone drops frames in low light.
PTS = [0, 33, 67, 100, 200, 233, 267, 300, 367, 400, 433, 467, 500, 533, 567, 600, 633, 667, 700, 800, 833, 867,
       900, 933]


def make_clip(path: Path, width: int = 64, height: int = 48, pts: list[int] = PTS, audio: bool = True,
              rotation: int = 0) -> Path:
    """A moving gradient with a square, at the given millisecond timestamps, plus a 1 s 440 Hz AAC tone."""
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
    # 4:4:4 so that odd sizes can be made at all (4:2:0 needs even ones)
    v.width, v.height, v.pix_fmt = width, height, "yuv420p" if width % 2 == height % 2 == 0 else "yuv444p"
    v.codec_context.time_base = TB
    if rotation:
        v.set_display_rotation(rotation)
    a = out.add_stream("aac", rate=16000) if audio else None
    yy, xx = np.mgrid[0:height, 0:width]
    for i, p in enumerate(pts):
        rgb = np.stack([(xx * 4 + i * 8) % 256, (yy * 5) % 256, np.full_like(xx, 128)], -1).astype(np.uint8)
        rgb[10:20, 4 + i: 14 + i] = 255
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = p, TB
        out.mux(v.encode(frame))
    out.mux(v.encode(None))
    if a is not None:
        t = np.arange(16000) / 16000
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, 16000, 1024):
            chunk = tone[start:start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            out.mux(a.encode(frame))
        out.mux(a.encode(None))
    out.close()
    return path


def video_pts_seconds(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [float(f.pts * s.time_base) for f in c.decode(s)]


def audio_packets(path: Path) -> list[tuple[float, bytes]]:
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return [(float(p.pts * s.time_base), bytes(p)) for p in c.demux(s) if p.size]


@pytest.fixture(scope="module")
def muse():
    return pipeline.load("muse")[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "in.mp4")


def test_stylize_keeps_frames_timestamps_and_audio(muse, clip: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    dst = tmp_path / "out.mp4"
    n = video.process(muse, clip, dst, batch=5, progress=lambda d, t: seen.append((d, t)))
    assert n == len(PTS)
    with av.open(str(dst)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.pix_fmt) == ("h264", "yuv420p")
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]  # playable: every frame decodes
    assert len(frames) == len(PTS)
    assert frames[0].shape == (48, 64, 3)
    # Each frame's time, variable steps included, to the millisecond of the input's time base.
    assert video_pts_seconds(dst) == pytest.approx(video_pts_seconds(clip), abs=1e-3)
    assert video_pts_seconds(dst)[4] == pytest.approx(0.2, abs=1e-3)
    # The audio is copied packet for packet: same bytes, same times.
    assert audio_packets(dst) == audio_packets(clip)
    assert audio_packets(dst)
    # Progress in batches of 5, ending at all frames.
    assert [d for d, _ in seen][:5] == [5, 10, 15, 20, 24]
    assert seen[-1] == (24, 24)
    # Stylized, not copied: far from the input frames.
    with av.open(str(clip)) as c:
        first_in = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(float)
    assert np.abs(frames[0].astype(float) - first_in).mean() > 20


def test_options_apply_to_every_frame(muse, clip: Path, tmp_path: Path) -> None:
    """strength 0 is the input (up to two H.264 round trips), max_side shrinks every frame: the image options."""
    dst = tmp_path / "out.mp4"
    video.process(muse, clip, dst, Options(strength=0.0, max_side=32))
    with av.open(str(clip)) as a, av.open(str(dst)) as b:
        ins = [f.to_ndarray(format="rgb24", width=32, height=24).astype(float) for f in a.decode(video=0)]
        outs = [f.to_ndarray(format="rgb24").astype(float) for f in b.decode(video=0)]
    assert outs[0].shape == (24, 32, 3)
    assert max(np.abs(x - y).mean() for x, y in zip(ins, outs, strict=True)) < 6


def test_frames_get_the_image_pipelines_pixels_at_odd_sizes(muse, tmp_path: Path) -> None:
    """A frame of a 63x37 clip (not a multiple of 4, odd) comes out as `pipeline.run` makes that frame as an image,
    cropped to 62x36: not shifted, not resized (up to the H.264 round trip; `process` runs unsmoothed by default)."""
    src = make_clip(tmp_path / "odd.mp4", width=63, height=37, pts=PTS[:2], audio=False)
    dst = tmp_path / "out.mp4"
    video.process(muse, src, dst)
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        frame = next(a.decode(video=0)).to_ndarray(format="rgb24")
        got = next(b.decode(video=0)).to_ndarray(format="rgb24").astype(float)
    want = pipeline.run(muse, torch.from_numpy(frame).permute(2, 0, 1)[None].float())
    want = want[0, :, :36, :62].permute(1, 2, 0).numpy()
    assert got.shape == want.shape
    # 7.7 here: 4:2:0 chroma on a 62x36 texture (4.7 of it at CRF 0); one pixel off gives 13.5 (rows), 17.9 (columns)
    error = np.abs(got - want).mean()
    assert error < 10
    assert np.abs(got[:, 1:] - want[:, :-1]).mean() > 1.5 * error
    assert np.abs(got[1:] - want[:-1]).mean() > 1.5 * error


def test_odd_size_gives_even_output_and_rotation_is_kept(muse, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "odd.mov", width=63, height=37, pts=PTS[:6], audio=False, rotation=90)
    dst = tmp_path / "odd.mkv"
    assert video.process(muse, src, dst) == 6
    with av.open(str(dst)) as c:
        frames = list(c.decode(video=0))
    assert {(f.width, f.height) for f in frames} == {(62, 36)}
    assert frames[0].rotation == 90
    assert not av.open(str(dst)).streams.audio


def test_upscale_multiplies_the_size_by_the_factor(tmp_path: Path) -> None:
    net = pipeline.load("sr_x4")[0]
    src = make_clip(tmp_path / "small.mp4", width=24, height=18, pts=PTS[:3], audio=True)
    dst = tmp_path / "big.mp4"
    assert video.process(net, src, dst) == 3
    with av.open(str(dst)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (96, 72)
    assert audio_packets(dst) == audio_packets(src)


def test_an_interrupt_midway_leaves_no_file(muse, clip: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.mp4"

    def interrupt(done: int, total: int) -> None:
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        video.process(muse, clip, dst, batch=4, progress=interrupt)
    assert list(tmp_path.iterdir()) == []  # neither the output nor the temporary file


def test_an_existing_output_survives_a_failed_run(muse, clip: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.mp4"
    dst.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        video.process(muse, clip, dst, forward=lambda net, x: (_ for _ in ()).throw(RuntimeError("boom")))
    assert dst.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_truncated_and_non_video_files_are_video_errors(muse, clip: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[:600])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    for bad in (cut, junk):
        with pytest.raises(video.VideoError) as e:
            video.process(muse, bad, tmp_path / "out.mp4")
        assert e.value.status in (400, 415)
    with pytest.raises(video.VideoError, match="write .mp4"):
        video.process(muse, clip, tmp_path / "out.webm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mp4", "junk.mp4"]


def test_sniff_tells_containers_from_images(clip: Path, tmp_path: Path) -> None:
    assert video.sniff(clip.read_bytes()[:16]) == "mp4"
    mkv = make_clip(tmp_path / "a.mkv", pts=PTS[:2], audio=False)
    assert video.sniff(mkv.read_bytes()[:16]) == "matroska"
    png = b"\x89PNG\r\n\x1a\n" + bytes(8)
    assert video.sniff(png) is None
    assert video.sniff(b"") is None


def test_probe_limits(clip: Path) -> None:
    info = video.probe(clip)
    assert (info.width, info.height, info.audio) == (64, 48, ("aac",))
    with pytest.raises(video.VideoError, match="limit") as e:
        video.probe(clip, max_seconds=0.5)
    assert e.value.status == 413
    with pytest.raises(video.VideoError, match="pixels"):
        video.probe(clip, max_frame_pixels=10 * 64 * 48)


def test_smoothing_reduces_flicker_on_a_static_noisy_clip(muse, tmp_path: Path) -> None:
    """A still scene with sensor noise: blending with the previous output where the input did not change
    halves (at least) the frame-to-frame change of the stylized output; a moving edge is not held back."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    base = np.stack([xx * 3, yy * 4, np.full_like(xx, 100)], -1).astype(float)
    smoother, plain = video.Smoother(0.8), video.Smoother(0.0)
    outs_s, outs_p = [], []
    for _ in range(6):
        frame = torch.from_numpy((base + rng.normal(0, 3, base.shape)).clip(0, 255)).permute(2, 0, 1)[None].float()
        (y,) = pipeline.infer(muse, [frame])
        outs_s.append(smoother(frame, y))
        outs_p.append(plain(frame, y))

    def flicker(outs: list[torch.Tensor]) -> float:
        return float(torch.stack([(b - a).abs().mean() for a, b in zip(outs[:-1], outs[1:], strict=True)]).mean())

    assert flicker(outs_s) < 0.5 * flicker(outs_p)
    # A frame that changed everywhere (a cut) is taken as it is.
    cut = torch.full_like(outs_s[0][:, :, :, :], 0.0)
    (y,) = pipeline.infer(muse, [cut])
    assert torch.allclose(smoother(cut, y), y, atol=1.0)


def test_cli_stylize_and_upscale_a_video(clip: Path, tmp_path: Path, tmp_store: Path) -> None:
    runner = CliRunner()
    dst = tmp_path / "out.mp4"
    result = runner.invoke(app, ["stylize", "--model", "muse", "--smooth", "0.5", str(clip), str(dst)])
    assert result.exit_code == 0, result.output
    assert len(video_pts_seconds(dst)) == len(PTS)
    assert "24 frames" in result.output
    bad = runner.invoke(app, ["upscale", "--factor", "4", str(clip), str(tmp_path / "out.webm")])
    assert bad.exit_code != 0
    assert "write .mp4" in bad.output
