"""`percept models export`: the ONNX file runs in ONNX Runtime at sizes other than the example's and gives the
PyTorch output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from model_store import store
from model_store.networks import NetworkConfig, build_network
from percept.cli import app

ort = pytest.importorskip("onnxruntime")


def test_exported_onnx_runs_in_onnxruntime_like_pytorch(tmp_store: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(kind="style", width=0.25, residual_blocks=1)).eval()
    store.publish("tiny", net)
    out = tmp_path / "tiny.onnx"
    r = CliRunner().invoke(app, ["models", "export", "tiny", "--format", "onnx", "--output", str(out)])
    assert r.exit_code == 0, r.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for h, w in [(36, 52), (64, 48)]:  # dynamic height and width, neither the export's example size
        x = torch.rand(2, 3, h, w) * 255
        (y,) = session.run(None, {"image": x.numpy()})
        with torch.inference_mode():
            ref = net(x).numpy()
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() < 0.5  # grey levels; measured 0.17 (ORT's own instance-norm kernels)


def test_export_refuses_an_unknown_format_or_model(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["models", "export", "muse", "--format", "tflite", "--output", str(tmp_path / "m")])
    assert r.exit_code == 2 and "onnx" in r.output
    r = runner.invoke(app, ["models", "export", "no-such-model", "--output", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "Traceback" not in r.output
