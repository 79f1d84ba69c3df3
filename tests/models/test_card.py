"""Model cards: validation with messages naming the key, discovery, SHA-256 refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from models.card import ModelLoadError, load_cards, read_card, scan_cards
from models.loaders import load_model, weights_digest
from tests.models.helpers import make_card, tiny_unet_weights


def _card_dict(tmp_path: Path) -> dict:
    weights = tiny_unet_weights(tmp_path / "m" / "model.pt")
    card = make_card(tmp_path, "m", weights)
    assert card.card_path is not None
    return yaml.safe_load(card.card_path.read_text())


def test_valid_card_round_trips(tmp_path: Path) -> None:
    weights = tiny_unet_weights(tmp_path / "unet" / "model.pt")
    card = make_card(tmp_path, "unet", weights)
    again = read_card(card.card_path)  # type: ignore[arg-type]
    assert again.name == "unet" and again.sha256 == card.sha256
    assert again.labels[0].category.value == "49755003"
    assert again.labels[0].type.to_domain().meaning == "Lesion"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"sha256": "abc"}, "sha256"),
        ({"device_uid": "not-a-uid"}, "device_uid"),
        ({"framework": "keras"}, "framework"),
        ({"surprise": 1}, "surprise"),
        ({"labels": [], "framework": "timm"}, "labels"),  # only a MONAI bundle may omit them
        ({"input": {"dims": 2, "spatial_size": [32]}}, "input"),
    ],
)
def test_invalid_card_is_refused_naming_the_key(tmp_path: Path, change: dict, key: str) -> None:
    data = {**_card_dict(tmp_path), **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelLoadError, match=key):
        read_card(path)


def test_load_cards_skips_a_broken_card_and_keeps_the_others(tmp_path: Path) -> None:
    make_card(tmp_path, "good", tiny_unet_weights(tmp_path / "good" / "model.pt"))
    (tmp_path / "broken.yaml").write_text("name: broken\n: :\n")
    cards, errors = scan_cards(tmp_path)
    assert list(cards) == ["good"]
    assert list(load_cards(tmp_path)) == ["good"]
    assert any("broken.yaml" in str(p) for p in errors)


def test_relative_weights_resolve_next_to_the_card(tmp_path: Path) -> None:
    weights = tiny_unet_weights(tmp_path / "rel" / "model.pt")
    card = make_card(tmp_path, "rel", Path("model.pt"), sha256=weights_digest(weights))
    assert read_card(card.card_path).weights_path == weights  # type: ignore[arg-type]


def test_sha_mismatch_refuses_to_load(tmp_path: Path) -> None:
    weights = tiny_unet_weights(tmp_path / "m" / "model.pt")
    card = make_card(tmp_path, "m", weights)
    tiny_unet_weights(weights, seed=1)  # the file is swapped after the card was written
    with pytest.raises(ModelLoadError, match="SHA-256 mismatch"):
        load_model(card, "cpu")


def test_missing_weights_refused_clearly(tmp_path: Path) -> None:
    weights = tiny_unet_weights(tmp_path / "m" / "model.pt")
    card = make_card(tmp_path, "m", weights)
    weights.unlink()
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(card, "cpu")


def test_an_all_digit_sha_read_as_a_number_is_refused_with_how_to_fix(tmp_path: Path) -> None:
    data = _card_dict(tmp_path)
    path = tmp_path / "digits" / "card.yaml"
    path.parent.mkdir()
    text = yaml.safe_dump({**data, "sha256": "0"}).replace("sha256: '0'", "sha256: " + "1" * 64)
    path.write_text(text)
    assert isinstance(yaml.safe_load(text)["sha256"], int)  # what YAML does with the digits
    with pytest.raises(ModelLoadError, match="sha256: .*read the SHA-256 as a number.*quote it"):
        read_card(path)


def _input_card(tmp_path: Path, card_input: dict) -> Path:
    data = {**_card_dict(tmp_path), "input": card_input}
    path = tmp_path / "input.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_old_spacing_mm_key_is_refused_saying_what_to_write(tmp_path: Path) -> None:
    """(z, y, x) spacing_mm next to MONAI's (x, y, z) pixdim was silently wrong when pasted."""
    path = _input_card(tmp_path, {"dims": 3, "spatial_size": [16, 32, 32], "spacing_mm": [5, 2, 1]})
    with pytest.raises(ModelLoadError) as refused:
        read_card(path)
    message = str(refused.value)
    assert "input.yaml" in message and "spacing_mm" in message
    assert "axcodes" in message and "pixdim" in message and "SPL" in message


def test_a_null_spacing_mm_from_older_cards_is_dropped(tmp_path: Path) -> None:
    path = _input_card(tmp_path, {"dims": 2, "spatial_size": [32, 32], "spacing_mm": None})
    assert read_card(path).input.axcodes is None


@pytest.mark.parametrize(
    ("card_input", "problem"),
    [
        ({"dims": 3, "spatial_size": [8, 8, 8], "axcodes": "RAR"}, "one of L/R"),
        ({"dims": 3, "spatial_size": [8, 8, 8], "axcodes": "RA"}, "one of L/R"),
        ({"dims": 3, "spatial_size": [8, 8, 8], "pixdim": [1, 1, 1]}, "pixdim needs axcodes"),
        ({"dims": 3, "spatial_size": [8, 8, 8], "axcodes": "RAS", "pixdim": [1, 0, 1]}, "positive"),
        ({"dims": 3, "spatial_size": [8, 8, 8], "axcodes": "RAS", "pixdim": [1, 1]}, "pixdim"),
        ({"dims": 2, "spatial_size": [8, 8], "axcodes": "RAS"}, "for 3D models"),
    ],
)
def test_orientation_keys_are_validated(tmp_path: Path, card_input: dict, problem: str) -> None:
    with pytest.raises(ModelLoadError, match=problem):
        read_card(_input_card(tmp_path, card_input))


def test_axcodes_are_read_in_capitals(tmp_path: Path) -> None:
    card_input = {"dims": 3, "spatial_size": [8, 8, 8], "axcodes": "ras", "pixdim": [1.5, 1.5, 2]}
    spec = read_card(_input_card(tmp_path, card_input)).input
    assert (spec.axcodes, spec.pixdim) == ("RAS", (1.5, 1.5, 2.0))
