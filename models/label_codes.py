"""Standard SNOMED CT codes for the TotalSegmentator / ``wholeBody_ct_segmentation`` label set.

A 104-organ bundle names its channels (``spleen``, ``kidney_left``, ``vertebrae_L3`` ...) in its
``metadata.json``; writing 104 coded labels into a card by hand is where mistakes creep in, and a
SEG whose left and right kidney carry the same code is useless to a viewer. The shipped map
(``models/data/totalsegmentator_snomed_mapping.csv``, TotalSegmentator's own
``resources/totalsegmentator_snomed_mapping.csv``, Apache-2.0, see ``models/data/README.md``) gives
each name its Segmented Property Category, Type and laterality modifier; the category decides the
kind (an "Anatomical Structure" or "Tissue" is anatomy, a "Morphologically Altered Structure" such as
a kidney cyst is a finding).

:func:`bundle_labels` builds a bundle's card labels from its channel names with these codes; labels
the card lists itself override the map (a different code, ``kind: finding`` for a structure the
pipeline reports as a lesion, a colour).
"""

from __future__ import annotations

import colorsys
import csv
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from models.card import CardLabel, CodedConceptModel, ModelLoadError

MAP_FILE = Path(__file__).parent / "data" / "totalsegmentator_snomed_mapping.csv"
_FINDING_CATEGORIES = {"49755003"}  # SCT Morphologically Altered Structure
_PREFIX = "SegmentedProperty"


def _concept(row: dict[str, str], sequence: str) -> CodedConceptModel | None:
    value = row.get(f"{sequence}.CodeValue", "").strip()
    if not value:
        return None
    return CodedConceptModel(
        value=value,
        scheme=row[f"{sequence}.CodingSchemeDesignator"].strip(),
        meaning=row[f"{sequence}.CodeMeaning"].strip(),
    )


@lru_cache(maxsize=1)
def standard_labels() -> dict[str, CardLabel]:
    """Every structure of the map by lower-case name, as a card label with value 1 (a template)."""
    out: dict[str, CardLabel] = {}
    with MAP_FILE.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            category = _concept(row, f"{_PREFIX}CategoryCodeSequence")
            kind_of = _concept(row, f"{_PREFIX}TypeCodeSequence")
            if category is None or kind_of is None:
                continue
            name = row["Structure"].strip()
            out[name.lower()] = CardLabel(
                value=1,
                name=name,
                category=category,
                type=kind_of,
                type_modifier=_concept(row, f"{_PREFIX}TypeModifierCodeSequence"),
                kind="finding" if category.value in _FINDING_CATEGORIES else "anatomy",
            )
    return out


def standard_label(name: str) -> CardLabel | None:
    """The map's label for a channel name (case-insensitive), or None when it has none."""
    return standard_labels().get(name.strip().lower())


def distinct_color(index: int) -> tuple[int, int, int]:
    """A bright colour per label index, hues spread by the golden ratio (neighbours differ)."""
    hue = (index * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return (round(red * 255), round(green * 255), round(blue * 255))


def bundle_labels(
    channel_names: Sequence[str], listed: Sequence[CardLabel], model: str
) -> list[CardLabel]:
    """The card labels of a bundle with channels ``channel_names`` (background first).

    ``listed`` are the card's own labels: each must name the bundle's channel at its value, and
    it is used as written. Every other channel takes its codes from the map; a channel the map
    does not know must be listed in the card (a label without codes is refused, as everywhere).
    """
    names = list(channel_names[1:])
    by_value = {label.value: label for label in listed}
    wrong = [
        f"{label.value}: {label.name!r} (channel_def says "
        f"{names[label.value - 1] if label.value <= len(names) else 'nothing'!r})"
        for label in listed
        if label.value > len(names) or names[label.value - 1].lower() != label.name.lower()
    ]
    if wrong:
        raise ModelLoadError(
            f"model {model!r}: the card's labels are not the bundle's channel_def "
            f"{list(channel_names)} (after the background channel): {'; '.join(wrong)}"
        )
    labels: list[CardLabel] = []
    unknown: list[str] = []
    for value, name in enumerate(names, start=1):
        if value in by_value:
            labels.append(by_value[value])
            continue
        standard = standard_label(name)
        if standard is None:
            unknown.append(name)
            continue
        labels.append(
            standard.model_copy(
                update={"value": value, "name": name, "color": distinct_color(value)}
            )
        )
    if unknown:
        raise ModelLoadError(
            f"model {model!r}: no standard SNOMED CT code for the bundle's channel(s) {unknown}; "
            "list them under the card's labels with their category and type codes"
        )
    return labels
