"""The one inference pipeline: the CLI, the API's worker and the Python API give the same pixels; tiling is
decided per job by the pixel budget, batched jobs included; bad files in a folder are skipped, not fatal."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import percept
from imaging import codec
from model_store import inference, pipeline, store
from model_store.networks import NetworkConfig, build_network
from percept.cli import app
from worker.memory_queue import MemoryQueue
from worker.queue import JobParams
from worker.runner import Worker
from worker.settings import WorkerSettings

runner = CliRunner()


def rgba_png(path: Path, w: int = 44, h: int = 36, seed: int = 0) -> Path:
    """A textured RGBA PNG with a soft alpha ramp: exercises resizing, blending, colour and alpha at once."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    alpha = np.tile(np.linspace(40, 255, w, dtype=np.float32), (h, 1)).astype(np.uint8)[..., None]
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(path)
    return path


def test_cli_and_api_give_identical_pixels(tmp_path: Path) -> None:
    from service.app import create_app
    from service.settings import ServiceSettings

    src = rgba_png(tmp_path / "in.png")
    out = tmp_path / "out.png"
    r = runner.invoke(app, ["stylize", str(src), str(out), "--model", "muse", "--strength", "0.6",
                            "--preserve-color", "--max-side", "32"])
    assert r.exit_code == 0, r.output
    with TestClient(create_app(ServiceSettings(device="cpu", warmup_sizes=""))) as client:
        # wait=120: the first request of a model may convert it for OpenVINO first (seconds, more under load)
        resp = client.post("/stylize", params={"style": "muse", "strength": 0.6, "preserve_color": True,
                                               "max_side": 32, "wait": 120}, content=src.read_bytes(),
                           headers={"Content-Type": "image/png"})
    assert resp.status_code == 200, resp.text
    cli = np.asarray(Image.open(out))
    api = np.asarray(Image.open(io.BytesIO(resp.content)))
    assert cli.shape == api.shape == (26, 32, 4)  # alpha kept, longer side 32
    assert np.array_equal(cli, api)
    assert np.array_equal(cli[..., 3], api[..., 3]) and cli[..., 3].min() < 100  # the alpha ramp came through


def test_python_api_is_the_same_pipeline(tmp_path: Path) -> None:
    src = rgba_png(tmp_path / "in.png")
    out = tmp_path / "out.png"
    assert runner.invoke(app, ["upscale", str(src), str(out), "--factor", "4", "--loss", "pixel"]).exit_code == 0
    result = percept.upscale(src, factor=4, loss="pixel")
    assert result.mode == "RGBA" and result.size == (44 * 4, 36 * 4)
    assert np.array_equal(np.asarray(result), np.asarray(Image.open(out)))
    styled = percept.stylize(Image.open(src).convert("RGB"), "muse", strength=0.0)  # strength 0: the photo back
    assert np.array_equal(np.asarray(styled), np.asarray(Image.open(src).convert("RGB")))


def test_tiled_run_equals_untiled() -> None:
    """A budget that forces tiles gives the same pixels as one pass (whole-image instance-norm statistics)."""
    net, _ = store.load("muse")
    x = torch.rand(1, 3, 96, 80) * 255
    whole = pipeline.run(net, x, forward=inference.forward)  # eager fp32, as the tiles run
    assert pipeline.needs_tiling(x, 1, tile_pixels=2_000)
    tiled = pipeline.run(net, x, tile_pixels=2_000, forward=inference.forward)
    assert (whole - tiled).abs().max() < 0.05


def test_large_same_size_jobs_are_tiled_even_when_batched(tmp_store: Path) -> None:
    """Several same-size jobs over the budget share a batch key but each runs in tiles (issue 13: 6 x 1 MP sr_x4
    jobs once ran as one untiled batch and peaked at 7.6 GB)."""
    torch.manual_seed(0)
    store.publish("tiny-sr", build_network(NetworkConfig(kind="sr", factor=2, width=0.25, residual_blocks=1)))
    queue = MemoryQueue()
    worker = Worker(queue, WorkerSettings(device="cpu", warmup_sizes="", tile_pixels=1_000_000, max_batch_delay_ms=200))
    passes: list[tuple[int, ...]] = []
    real = worker._forward

    def spy(net, x):
        passes.append(tuple(x.shape))
        return real(net, x)

    worker._forward = spy  # type: ignore[method-assign]
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 520, 3), dtype=np.uint8)).save(buf, "PNG")
    ids = [queue.submit("tiny-sr", JobParams(), buf.getvalue()) for _ in range(3)]
    worker.ready = True
    done = 0
    while done < 3:
        done += worker.step(first_wait_ms=100)
    assert all(queue.status(i).status == "done" for i in ids)
    assert passes and all(shape[0] == 1 and shape[2] * shape[3] * 4 <= 1_000_000 for shape in passes), passes[:4]
    assert len(passes) > 3  # several tiles per job


def test_codec_threads_give_the_same_results_and_fail_only_the_job_that_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch decoded and encoded on codec threads (PERCEPT_CODEC_THREADS) gives each job the bytes one thread
    gives, in its own order; a result that cannot be encoded fails its job alone, with the encoder's status."""
    uploads = []
    for seed in range(4):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, "PNG")
        uploads.append(buf.getvalue())
    real_encode = pipeline.encode

    def encode(image, decoded, options):
        if options.format == "jpeg":
            raise codec.ImageError(415, "no jpeg today")
        return real_encode(image, decoded, options)

    monkeypatch.setattr(pipeline, "encode", encode)
    results = {}
    for threads in (1, 3):
        queue = MemoryQueue()
        worker = Worker(queue, WorkerSettings(device="cpu", warmup_sizes="", codec_threads=threads,
                                              max_batch_delay_ms=0))
        assert (worker._codec_pool is None) == (threads == 1)
        ids = [queue.submit("muse", JobParams(format="jpeg" if i == 2 else "png", quality=90), data)
               for i, data in enumerate(uploads)]
        assert worker.step(first_wait_ms=100) == 4
        records = [queue.status(i) for i in ids]
        assert [r.status for r in records] == ["done", "done", "failed", "done"]
        assert records[2].error_status == 415 and records[2].error == "no jpeg today"
        assert {r.batch_size for r in records if r.status == "done"} == {4}  # one forward pass for the four
        results[threads] = [queue.result(i) for i in ids]
        assert worker.counters["jobs_done"] == 3 and worker.counters["jobs_failed"] == 1
    assert results[1] == results[3]


def test_workers_of_one_process_share_the_backend() -> None:
    """One forward (one OpenVINO Core and compiled-model cache) per process and engine choice, not per worker."""
    settings = WorkerSettings(device="cpu", warmup_sizes="")
    assert Worker(MemoryQueue(), settings)._backend_forward is Worker(MemoryQueue(), settings)._backend_forward
    eager, default = (Worker(MemoryQueue(), WorkerSettings(device="cpu", warmup_sizes="", backend="torch",
                                                           precision="fp32")), Worker(MemoryQueue(), settings))
    assert (eager._backend_forward is default._backend_forward) == (eager.backend.label == default.backend.label)


def test_clips_run_on_the_worker_thread_and_images_beside_them_on_codec_threads() -> None:
    """A read that returns clips and images: the images are decoded on the codec threads, each clip runs on the
    worker's own thread (it computes forward passes; two on codec threads would share the compiled network), and
    the items keep the queue's order."""
    import threading

    queue = MemoryQueue()
    worker = Worker(queue, WorkerSettings(device="cpu", warmup_sizes="", codec_threads=2, max_batch_delay_ms=0))
    clip = b"\x00\x00\x00\x18ftypisom" + bytes(64)  # an MP4 by its first bytes
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 30, 30)).save(buf, "PNG")
    kinds = ["clip", "image", "clip", "image", "image"]
    ids = [queue.submit("muse", JobParams(), clip if kind == "clip" else buf.getvalue()) for kind in kinds]
    threads: dict[str, str] = {}
    real_prepare = worker._prepare

    def prepare(job):
        threads[job.id] = threading.current_thread().name
        return real_prepare(job)

    def run_video(job):
        assert threading.current_thread() is threading.main_thread()
        queue.fail(job, "clip seen", retry=False, status=418)

    worker._prepare = prepare  # type: ignore[method-assign]
    worker._run_video = run_video  # type: ignore[method-assign]
    assert worker.step(first_wait_ms=100) == 3  # the three images, in one batch
    assert [threads[i].startswith("percept-codec") for i in ids] == [kind == "image" for kind in kinds]
    assert [queue.status(i).status for i in ids] == ["failed" if kind == "clip" else "done" for kind in kinds]


def test_folder_run_skips_bad_files_and_says_so(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    rgba_png(src / "a.png")
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # truncated
    (src / "notes.txt").write_text("not an image")
    rgba_png(src / "c.png", seed=1)
    r = runner.invoke(app, ["stylize", str(src), str(tmp_path / "out"), "--model", "muse", "--format", "jpg"])
    assert r.exit_code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_muse.jpg", "c_muse.jpg"]  # NAME_<style>.ext
    assert "b.png" in r.output and "notes.txt" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("args, words", [
    (["--model", "muse", "{out}.gif"], ["gif", "webp"]),
    (["--model", "muse", "--device", "cuda:7"], ["CUDA"]),
    (["--model", "no-such-model"], ["no-such-model"]),
    (["--model", "{tmp}/missing.pt"], ["missing.pt"]),
])
def test_cli_errors_are_messages(args: list[str], words: list[str], tmp_path: Path) -> None:
    if "cuda:7" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    src = rgba_png(tmp_path / "in.png")
    args = [a.format(out=tmp_path / "o", tmp=tmp_path) for a in args]
    dst = next((a for a in args if a.endswith(".gif")), str(tmp_path / "o.png"))
    args = [a for a in args if a != dst]
    r = runner.invoke(app, ["stylize", str(src), dst, *args])
    assert r.exit_code != 0 and "Traceback" not in r.output
    for w in words:
        assert w in r.output, r.output


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from percept.cli import app; "
            "[CliRunner().invoke(app, a) for a in (['--help'], ['stylize', '--help'], ['train', 'style', '--help'])];"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"



def test_python_api_serves_a_newly_published_version(tmp_store: Path) -> None:
    torch.manual_seed(0)
    store.publish("tiny-style", build_network(NetworkConfig(kind="style", width=0.25, residual_blocks=1)))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    first = np.asarray(percept.stylize(image, "tiny-style"))
    torch.manual_seed(1)
    store.publish("tiny-style", build_network(NetworkConfig(kind="style", width=0.25, residual_blocks=1)))
    assert not np.array_equal(np.asarray(percept.stylize(image, "tiny-style")), first)  # v2, not the cached v1
    assert np.array_equal(np.asarray(percept.stylize(image, "tiny-style@1")), first)
