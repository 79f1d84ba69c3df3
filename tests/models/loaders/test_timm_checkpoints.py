"""timm weights as users have them: plain state_dict, ``train.py`` checkpoints (raw or EMA), safetensors.

timm's ``train.py`` saves ``{"state_dict", "state_dict_ema", "args": argparse.Namespace, ...}``;
``torch.load(weights_only=True)`` refuses the Namespace. The node unpickles such a file fully only
after its SHA-256 matched the card, and never a file whose digest differs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.card import ModelLoadError
from models.loaders import load_model
from tests.models.helpers import make_card


class _Exploit:
    """A pickle that creates a file when it is unpickled: proof of what full unpickling runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


def _nets(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    import timm

    torch.manual_seed(seed)
    raw = timm.create_model("test_resnet", pretrained=False, num_classes=2, in_chans=1).eval()
    ema = timm.create_model("test_resnet", pretrained=False, num_classes=2, in_chans=1).eval()
    return raw, ema


def _train_py_checkpoint(path: Path, raw: torch.nn.Module, ema: torch.nn.Module) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(model="test_resnet", lr=0.1, epochs=3)
    torch.save(
        {
            "epoch": 2,
            "arch": "test_resnet",
            "state_dict": raw.state_dict(),
            "state_dict_ema": ema.state_dict(),
            "optimizer": {},
            "args": args,
            "version": 2,
        },
        path,
    )
    return path


def _card(tmp_path: Path, name: str, weights: Path, **extra: object):  # type: ignore[no-untyped-def]
    card = make_card(
        tmp_path,
        name,
        weights,
        task="classification",
        framework="timm",
        architecture="test_resnet",
        arguments={},
    )
    return card.model_copy(update=extra)


def _same_outputs(model, net: torch.nn.Module) -> bool:  # type: ignore[no-untyped-def]
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return torch.allclose(model.forward(x), torch.softmax(net(x), 1), atol=1e-5)


def test_train_py_checkpoint_loads_raw_weights_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw, ema = _nets()
    path = _train_py_checkpoint(tmp_path / "cls" / "checkpoint.pth.tar", raw, ema)
    with caplog.at_level(logging.WARNING, logger="models.loaders"):
        model = load_model(_card(tmp_path, "cls", path), "cpu")
    assert _same_outputs(model, raw) and not _same_outputs(model, ema)
    assert "needs full unpickling" in caplog.text and "SHA-256 matched" in caplog.text


def test_train_py_checkpoint_with_ema_flag_loads_the_ema_weights(tmp_path: Path) -> None:
    raw, ema = _nets()
    path = _train_py_checkpoint(tmp_path / "cls" / "checkpoint.pth.tar", raw, ema)
    model = load_model(_card(tmp_path, "cls", path, ema=True), "cpu")
    assert _same_outputs(model, ema) and not _same_outputs(model, raw)


def test_ema_flag_without_ema_weights_is_a_clear_error(tmp_path: Path) -> None:
    raw, _ = _nets()
    path = tmp_path / "cls" / "model.pth"
    path.parent.mkdir(parents=True)
    torch.save(raw.state_dict(), path)
    with pytest.raises(ModelLoadError, match="state_dict_ema"):
        load_model(_card(tmp_path, "cls", path, ema=True), "cpu")


def test_safetensors_weights(tmp_path: Path) -> None:
    raw, _ = _nets()
    path = tmp_path / "cls" / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in raw.state_dict().items()}, str(path))
    assert _same_outputs(load_model(_card(tmp_path, "cls", path), "cpu"), raw)


def test_a_file_that_needs_unpickling_is_never_unpickled_when_its_digest_differs(
    tmp_path: Path,
) -> None:
    raw, ema = _nets()
    path = _train_py_checkpoint(tmp_path / "cls" / "checkpoint.pth.tar", raw, ema)
    card = _card(tmp_path, "cls", path)
    marker = tmp_path / "executed"
    payload = torch.load(path, weights_only=False)
    payload["args"] = _Exploit(marker)
    torch.save(payload, path)  # swapped after the card was written
    with pytest.raises(ModelLoadError, match="SHA-256 mismatch"):
        load_model(card, "cpu")
    assert not marker.exists()
