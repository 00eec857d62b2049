"""The versioned model store: publish, list, load, integrity, names and atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model_store import store
from model_store.networks import NetworkConfig, TransformNet, build_network

SR = NetworkConfig(kind="sr", preset="modern", factor=4, width=0.25)
PAPER_STYLE = NetworkConfig(kind="style", preset="paper", width=0.25)


def _net(config: NetworkConfig = SR, seed: int = 0) -> TransformNet:
    torch.manual_seed(seed)
    return build_network(config).eval()


def _image(h: int = 12, w: int = 14) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)) * 255.0


def _entries(model_dir: Path) -> set[str]:
    return {p.name for p in model_dir.iterdir()}


def test_publish_then_list_get_load(tmp_store: Path) -> None:
    net = _net()
    entry = store.publish("tiny-sr", net, {"steps": 3})
    assert entry.version == 1 and entry.path == tmp_store / "tiny-sr" / "1"
    assert "tiny-sr" in store.list_models()
    assert store.versions("tiny-sr") == [1]
    assert store.default_version("tiny-sr") == 1

    got = store.get("tiny-sr")
    assert got.version == 1 and got.config == SR
    manifest = json.loads((got.path / store.MANIFEST_FILE).read_text())
    assert manifest == got.manifest
    assert manifest["name"] == "tiny-sr" and manifest["version"] == 1
    assert manifest["kind"] == "sr" and manifest["factor"] == 4 and manifest["dtype"] == "float16"
    assert manifest["training"] == {"steps": 3}
    assert manifest["sha256"] == store.sha256_file(got.weights_path)

    loaded, loaded_entry = store.load("tiny-sr")
    assert loaded_entry.version == 1 and not loaded.training and loaded.config == SR
    x = _image()
    with torch.no_grad():
        expected, actual = net(x), loaded(x)
    assert not torch.equal(expected, actual)  # fp16 weights really are rounded...
    torch.testing.assert_close(actual, expected, rtol=0, atol=1.0)  # ...but give nearly the same image


def test_full_precision_round_trip_is_exact(tmp_store: Path) -> None:
    net = _net(PAPER_STYLE)
    net.train()
    with torch.no_grad():
        net(_image(16, 16))  # move the batch-norm running statistics away from their initial values
    net.eval()
    store.publish("paper-style", net, half=False)
    assert store.get("paper-style").manifest["dtype"] == "float32"
    loaded, _ = store.load("paper-style")
    original, restored = net.state_dict(), loaded.state_dict()
    assert list(original) == list(restored)
    for k, v in original.items():
        assert torch.equal(restored[k], v), k
    x = _image(13, 11)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_versions_increase_and_default_is_highest_unless_pinned(tmp_store: Path) -> None:
    first, second = _net(seed=0), _net(seed=1)
    assert store.publish("m", first).version == 1
    assert store.publish("m", second, half=False).version == 2
    assert store.versions("m") == [1, 2]
    assert store.default_version("m") == 2
    assert store.get("m").version == 2 and store.get("m", 1).version == 1
    x = _image()
    with torch.no_grad():
        assert torch.equal(store.load("m")[0](x), second(x))
    (tmp_store / "m" / store.DEFAULT_FILE).write_text("1\n")
    assert store.default_version("m") == 1 and store.load("m")[1].version == 1
    (tmp_store / "m" / store.DEFAULT_FILE).write_text("7\n")  # a pin to a missing version is ignored
    assert store.default_version("m") == 2
    with pytest.raises(store.ModelNotFound):
        store.get("m", 3)


def test_unknown_models_raise_model_not_found(tmp_store: Path) -> None:
    assert store.versions("absent") == []
    with pytest.raises(store.ModelNotFound):
        store.get("absent")
    with pytest.raises(store.ModelNotFound):
        store.get("absent", 1)
    with pytest.raises(LookupError):
        store.load("absent", 1)


def test_tampered_weights_raise_integrity_error(tmp_store: Path) -> None:
    entry = store.publish("victim", _net())
    data = bytearray(entry.weights_path.read_bytes())
    data[-1] ^= 0xFF  # the last byte is tensor data: the file still parses
    entry.weights_path.write_bytes(bytes(data))
    with pytest.raises(store.IntegrityError, match="sha256") as info:
        store.load("victim")
    assert str(entry.weights_path) in str(info.value)


@pytest.mark.parametrize("name", ["../x", "a.b", "", "A", "a" * 65, "a/b", "-lead", "_lead", "ok\n", "caf\u00e9"])
def test_invalid_names_are_rejected(tmp_store: Path, name: str) -> None:
    with pytest.raises(store.ModelStoreError):
        store.validate_name(name)
    with pytest.raises(store.ModelStoreError):
        store.publish(name, _net())
    with pytest.raises(store.ModelStoreError):
        store.get(name)
    assert list(tmp_store.iterdir()) == []


@pytest.mark.parametrize("name", ["a", "a" * 64, "0-style_v2", "x9"])
def test_valid_names(name: str) -> None:
    assert store.validate_name(name) == name


def test_publish_leaves_no_temporary_directory(tmp_store: Path) -> None:
    store.publish("clean", _net(), extra_files={"notes.txt": b"hello"})
    store.publish("clean", _net())
    assert _entries(tmp_store / "clean") == {"1", "2"}
    assert _entries(tmp_store / "clean" / "1") == {store.WEIGHTS_FILE, store.MANIFEST_FILE, "notes.txt"}
    assert (tmp_store / "clean" / "1" / "notes.txt").read_bytes() == b"hello"


def test_failed_publish_leaves_nothing(tmp_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken_save)  # store.publish imports it when it runs
    with pytest.raises(OSError, match="disk full"):
        store.publish("doomed", _net())
    assert store.versions("doomed") == []
    assert "doomed" not in store.list_models()
    assert _entries(tmp_store / "doomed") == set()


def test_publish_to_explicit_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_STORE", raising=False)
    root = tmp_path / "elsewhere"
    entry = store.publish("explicit", _net(), root=root)
    assert entry.path == root / "explicit" / "1"
    assert (entry.path / store.MANIFEST_FILE).is_file()


@pytest.mark.timeout(30)
def test_publish_skips_a_leftover_version_directory(tmp_store: Path) -> None:
    store.publish("leftover", _net())
    junk = tmp_store / "leftover" / "2"
    junk.mkdir()
    (junk / "junk").write_text("half-copied")  # no manifest: not a version, but its number is taken
    entry = store.publish("leftover", _net())
    assert entry.version == 3
    assert store.versions("leftover") == [1, 3]
    assert (junk / "junk").read_text() == "half-copied"


def test_store_roots_follow_model_store(tmp_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert store.roots() == [tmp_store, store.user_root(), store.BUILTIN_ROOT]
    assert store.publish_root() == tmp_store
    monkeypatch.delenv("MODEL_STORE")
    assert store.roots() == [store.user_root(), store.BUILTIN_ROOT]


def test_publishing_without_model_store_goes_to_the_user_store(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MODEL_STORE", "PERCEPT_USER_STORE", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home_store = tmp_path / "home" / ".local" / "share" / "percept" / "models"
    assert store.publish_root() == home_store and store.roots() == [home_store, store.BUILTIN_ROOT]

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "percept" / "models"
    builtin_before = sorted(p.name for p in store.BUILTIN_ROOT.iterdir())
    entry = store.publish("mine", _net())
    assert entry.path == user / "mine" / "1"  # not into the package (the source tree)
    assert sorted(p.name for p in store.BUILTIN_ROOT.iterdir()) == builtin_before
    assert "mine" in store.list_models() and store.get("mine").path == entry.path  # and it is searched
    assert "muse" in store.list_models()  # the built-in models still are

    monkeypatch.setenv("PERCEPT_USER_STORE", str(tmp_path / "elsewhere"))
    assert store.publish_root() == tmp_path / "elsewhere" and "mine" not in store.list_models()
