"""Each loader with a tiny freshly-initialised model: what goes in comes out, on the CPU, verified."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from models.card import ModelLoadError
from models.loaders import load_model
from models.training.demo_specs import YOLO_DEFINITION
from tests.models.helpers import TINY_UNET, make_card, tiny_unet_weights


def _check_segmentation_probabilities(model, size: int = 32) -> None:  # type: ignore[no-untyped-def]
    probs = model.forward(torch.rand(2, 1, size, size))
    assert probs.shape == (2, 2, size, size) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(2, size, size), atol=1e-4)


def test_monai_state_dict(tmp_path: Path) -> None:
    card = make_card(tmp_path, "sd", tiny_unet_weights(tmp_path / "sd" / "model.pt"))
    model = load_model(card, "cpu")
    _check_segmentation_probabilities(model)
    assert model.sha256 == card.sha256


def test_monai_state_dict_for_another_architecture_is_refused(tmp_path: Path) -> None:
    weights = tiny_unet_weights(tmp_path / "sd" / "model.pt")
    card = make_card(tmp_path, "sd", weights, arguments={**TINY_UNET, "channels": [8, 16]})
    with pytest.raises(ModelLoadError, match="failed to load"):
        load_model(card, "cpu")


def test_monai_bundle_folder(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle" / "tiny_bundle"
    (bundle / "configs").mkdir(parents=True)
    network_def = {"_target_": "monai.networks.nets.UNet", **TINY_UNET}
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1"}))
    tiny_unet_weights(bundle / "models" / "model.pt")
    card = make_card(tmp_path, "bundle", bundle, architecture="bundle", arguments={})
    _check_segmentation_probabilities(load_model(card, "cpu"))
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"version": "0.2"}))
    with pytest.raises(ModelLoadError, match="SHA-256 mismatch"):  # any changed file counts
        load_model(card, "cpu")


def test_torchscript(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    path = tmp_path / "ts" / "model.ts"
    path.parent.mkdir()
    torch.jit.script(net).save(str(path))
    card = make_card(
        tmp_path, "ts", path, framework="torchscript", architecture="conv", arguments={}
    )
    model = load_model(card, "cpu")
    _check_segmentation_probabilities(model)
    expected = torch.softmax(net(torch.ones(1, 1, 32, 32)), 1)
    assert torch.allclose(model.forward(torch.ones(1, 1, 32, 32)), expected, atol=1e-5)


def test_timm_checkpoint(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=2, in_chans=1).eval()
    path = tmp_path / "cls" / "checkpoint.pth"
    path.parent.mkdir()
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)  # a wrapped training checkpoint
    card = make_card(
        tmp_path,
        "cls",
        path,
        task="classification",
        framework="timm",
        architecture="test_resnet",
        arguments={},
    )
    model = load_model(card, "cpu")
    x = torch.rand(3, 1, 32, 32)
    probs = model.forward(x)
    assert probs.shape == (3, 2)
    with torch.inference_mode():
        assert torch.allclose(probs, torch.softmax(net(x), 1), atol=1e-5)


def _no_outbound_connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record (and refuse) any non-loopback connection attempt made while loading."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else str(address)
        if host not in ("127.0.0.1", "::1", "localhost") and not str(host).startswith("/"):
            attempts.append(address)
            raise OSError(f"test forbids outbound connection to {address}")
        return real_connect(self, address)  # type: ignore[arg-type]

    def no_dns(*args: object, **kwargs: object) -> object:
        attempts.append(args[0] if args else "dns")
        raise socket.gaierror("test forbids DNS lookups")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    return attempts


def test_ultralytics_yaml_builds_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = _no_outbound_connections(monkeypatch)
    yaml_file = tmp_path / "det" / "yolo_tiny.yaml"
    yaml_file.parent.mkdir()
    shutil.copyfile(YOLO_DEFINITION, yaml_file)
    card = make_card(
        tmp_path,
        "det",
        yaml_file,
        task="detection",
        framework="ultralytics",
        architecture="yolo11",
        arguments={},
        size=64,
    )
    model = load_model(card, "cpu")
    boxes = model.detect(
        np.random.default_rng(0).random((2, 64, 64), dtype=np.float32), conf=0.0001
    )
    assert len(boxes) == 2
    for per_image in boxes:
        for x0, y0, x1, y1, cls, score in per_image:
            assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64 and cls == 0 and 0 <= score <= 1
    assert attempts == []
    import ultralytics.utils

    assert ultralytics.utils.ONLINE is False


def test_ultralytics_trained_pt(tmp_path: Path) -> None:
    from models.loaders.ultralytics_env import prepare_offline

    prepare_offline()
    from ultralytics import YOLO

    torch.manual_seed(0)
    network = YOLO(str(YOLO_DEFINITION), task="detect").model
    path = tmp_path / "det" / "model.pt"
    path.parent.mkdir()
    torch.save({"model": network.half(), "train_args": {"task": "detect", "imgsz": 64}}, path)
    card = make_card(
        tmp_path,
        "det",
        path,
        task="detection",
        framework="ultralytics",
        architecture="yolo11",
        arguments={"conf": 0.0001},
        size=64,
    )
    model = load_model(card, "cpu")
    rgb = np.random.default_rng(1).random((1, 64, 64, 3), dtype=np.float32)
    (boxes,) = model.detect(rgb)
    assert all(len(b) == 6 for b in boxes)
    with pytest.raises(ValueError, match="expects images of"):
        model.detect(np.zeros((1, 32, 32), np.float32))


def test_forward_rejects_wrong_rank(tmp_path: Path) -> None:
    model = load_model(
        make_card(tmp_path, "sd", tiny_unet_weights(tmp_path / "sd" / "model.pt")), "cpu"
    )
    with pytest.raises(ValueError, match="4-D batch"):
        model.forward(torch.rand(1, 32, 32))
