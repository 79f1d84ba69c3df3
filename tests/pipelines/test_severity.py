from __future__ import annotations

import pytest

from core.domain import Severity
from pipelines.contract import Measurements
from pipelines.severity import classify_severity
from pipelines.spec import SeverityRules


def _m(
    area: float | None, circ: float | None, volume: float | None = None, pct: float = 0.1
) -> Measurements:
    return Measurements(area, pct, volume, 0.0, 0.0, "HU", circ, 10, (0, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("area", "circ", "expected"),
    [
        (50, 0.95, Severity.LOW),
        (150, 0.95, Severity.MODERATE),  # medium area
        (50, 0.7, Severity.MODERATE),  # medium circularity
        (600, 0.95, Severity.HIGH),  # large area
        (50, 0.3, Severity.HIGH),  # low circularity
        (None, None, Severity.LOW),
    ],
)
def test_default_rules(area: float | None, circ: float | None, expected: Severity) -> None:
    assert classify_severity(_m(area, circ), SeverityRules()) is expected


def test_configured_rules_and_volume_thresholds() -> None:
    rules = SeverityRules(
        moderate_area_mm2=10, high_area_mm2=20, moderate_volume_mm3=100, high_volume_mm3=1000
    )
    assert classify_severity(_m(15, 0.9), rules) is Severity.MODERATE
    assert classify_severity(_m(15, 0.9, volume=50), rules) is Severity.LOW  # volume decides in 3D
    assert classify_severity(_m(5, 0.9, volume=5000), rules) is Severity.HIGH


def test_uncalibrated_images_fall_back_to_area_share() -> None:
    assert classify_severity(_m(None, 0.95, pct=10.0), SeverityRules()) is Severity.HIGH


def test_inconsistent_rules_are_refused() -> None:
    with pytest.raises(ValueError):
        SeverityRules(moderate_area_mm2=500, high_area_mm2=100)
