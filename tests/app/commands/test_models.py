"""``pacsnode models list`` / ``models check`` output, through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from tests.models.helpers import make_card, tiny_unet_weights


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    make_card(folder, "good-seg", tiny_unet_weights(folder / "good-seg" / "model.pt"))
    swapped = make_card(
        folder, "swapped-seg", tiny_unet_weights(folder / "swapped-seg" / "model.pt")
    )
    tiny_unet_weights(swapped.weights_path, seed=5)
    (folder / "broken.yaml").write_text("name: broken\nframework: keras\n")
    for key in [k for k in __import__("os").environ if k.startswith("PACSNODE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PACSNODE_MODELS_DIR", str(folder))
    monkeypatch.setenv("PACSNODE_DATA_DIR", str(tmp_path / "data"))
    return folder


def test_models_list_shows_sha_device_and_problems(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    good = next(line for line in out.splitlines() if line.startswith("good-seg"))
    assert "monai" in good and "cpu" in good and " ok " in good
    assert good.endswith("not loaded yet")  # no worker has reported on it
    swapped = next(line for line in out.splitlines() if line.startswith("swapped-seg"))
    assert "SHA-256 MISMATCH" in swapped and swapped.endswith("failed")
    assert "broken.yaml" in out and "INVALID CARD" in out and "framework" in out


def test_models_check_loads_and_reports_where(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "check"]) == 0
    out = capsys.readouterr().out
    assert "OK   good-seg: monai UNet on cpu" in out
    assert "FAIL swapped-seg" in out and "SHA-256 mismatch" in out
    assert "1 of 3 model(s) load" in out
    assert main(["models", "check", "--strict"]) == 1


def test_models_check_reports_every_card_when_one_fails_unexpectedly(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = models_dir / "empty-seg" / "model.pt"
    empty.parent.mkdir()
    empty.write_bytes(b"")  # torch.load raises EOFError: not one of the loader's expected errors
    make_card(models_dir, "empty-seg", empty)
    assert main(["models", "check"]) == 0
    out = capsys.readouterr().out
    assert "FAIL empty-seg" in out
    assert "OK   good-seg" in out  # checked after empty-seg: the broken card did not stop the check
    assert "1 of 4 model(s) load" in out


def test_models_check_names_the_old_spacing_key_and_what_to_write(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = make_card(models_dir, "old-3d", tiny_unet_weights(models_dir / "old-3d" / "model.pt"))
    assert card.card_path is not None
    text = card.card_path.read_text()
    card.card_path.write_text(text.replace("  axcodes: null\n", "  spacing_mm: [5.0, 2.0, 2.0]\n"))
    assert main(["models", "check"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "old-3d" in line)
    assert line.startswith("FAIL") and "spacing_mm" in line and "axcodes" in line
