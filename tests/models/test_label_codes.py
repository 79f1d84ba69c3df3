"""The shipped SNOMED CT map for TotalSegmentator-style labels and bundle labels built from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.card import CardLabel, ModelCard, ModelLoadError
from models.label_codes import bundle_labels, standard_label, standard_labels

WHOLEBODY = (
    Path(__file__).resolve().parents[1]
    / "data"
    / "monai_bundles"
    / "wholeBody_ct_segmentation"
    / "configs"
    / "metadata.json"
)


def _channels() -> list[str]:
    metadata = json.loads(WHOLEBODY.read_text())
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    return [channel_def[k] for k in sorted(channel_def, key=int)]


def test_every_wholebody_label_has_a_code_and_is_anatomy() -> None:
    names = _channels()[1:]
    assert len(names) == 104
    missing = [n for n in names if standard_label(n) is None]
    assert missing == []
    assert {standard_label(n).kind for n in names} == {"anatomy"}  # type: ignore[union-attr]


def test_paired_organs_differ_by_laterality_only() -> None:
    left, right = standard_label("kidney_left"), standard_label("kidney_right")
    assert left is not None and right is not None
    assert left.type == right.type and left.type.value == "64033007"
    assert left.type_modifier is not None and left.type_modifier.value == "7771000"
    assert right.type_modifier is not None and right.type_modifier.value == "24028007"
    assert standard_label("LIVER") == standard_label("liver")  # names match case-insensitively


def test_morphologically_altered_structures_are_findings() -> None:
    cyst = standard_label("kidney_cyst_left")
    assert cyst is not None and cyst.kind == "finding"
    assert cyst.category.value == "49755003"
    assert len(standard_labels()) > 104


def _label(value: int, name: str, kind: str = "finding") -> CardLabel:
    return CardLabel.model_validate(
        {
            "value": value,
            "name": name,
            "kind": kind,
            "category": {"value": "49755003", "meaning": "Morphologically Altered Structure"},
            "type": {"value": "52988006", "meaning": "Lesion"},
        }
    )


def test_card_labels_override_the_map_and_unknown_channels_need_one() -> None:
    channels = ["background", "liver", "liver_tumour"]
    with pytest.raises(ModelLoadError, match="liver_tumour"):
        bundle_labels(channels, [], "m")
    labels = bundle_labels(channels, [_label(2, "liver_tumour")], "m")
    assert [(lab.value, lab.name, lab.kind) for lab in labels] == [
        (1, "liver", "anatomy"),
        (2, "liver_tumour", "finding"),
    ]
    assert labels[0].type.value == "10200004"
    with pytest.raises(ModelLoadError, match="channel_def"):
        bundle_labels(channels, [_label(1, "liver_tumour")], "m")


def test_only_a_monai_card_may_omit_its_labels() -> None:
    base = {
        "name": "m",
        "version": "1",
        "task": "segmentation",
        "architecture": "x",
        "weights": "w.pt",
        "sha256": "0" * 63 + "a",
        "input": {"dims": 3, "spatial_size": [8, 8, 8]},
        "device_uid": "2.25.1",
    }
    assert ModelCard.model_validate({**base, "framework": "monai"}).labels == []
    with pytest.raises(ValueError, match="at least one label"):
        ModelCard.model_validate({**base, "framework": "timm"})
